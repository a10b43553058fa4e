// Java's HttpClient (pooled HTTP/1.1), the last call with expectContinue(true).
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class JavaClient {
    public static void main(String[] args) {
        URI url = URI.create(System.getenv("HOOK_URL"));
        HttpClient c = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(10)).build();
        System.out.println(String.join(" ", post(c, url, new byte[0], false),
            post(c, url, new byte[1 << 20], false), post(c, url, new byte[0], false),
            post(c, url, new byte[2048], true)));
    }

    static String post(HttpClient c, URI url, byte[] body, boolean expect) {
        try {
            HttpRequest req = HttpRequest.newBuilder(url).timeout(Duration.ofSeconds(20))
                .expectContinue(expect).POST(HttpRequest.BodyPublishers.ofByteArray(body)).build();
            return String.valueOf(c.send(req, HttpResponse.BodyHandlers.discarding()).statusCode());
        } catch (Exception e) {
            return e.getClass().getSimpleName();
        }
    }
}
