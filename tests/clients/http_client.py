# Python's http.client on one connection: it must learn from the answers when the server closes.
import http.client, os, urllib.parse

url = urllib.parse.urlsplit(os.environ["HOOK_URL"])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)


def post(body=b""):
    try:
        conn.request("POST", url.path, body=body)
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    except Exception as e:
        return type(e).__name__


print(post(), post(b"x" * 1048576), post(), post(b"{}"))
