// node:http with a keep-alive agent of one socket (what axios uses): reuse must not fail.
const http = require("http");
const url = process.env.HOOK_URL;
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function post(body) {
  return new Promise((done) => {
    const headers = body ? { "Content-Length": body.length } : {};
    const req = http.request(url, { method: "POST", agent, headers }, (r) => {
      r.resume();
      r.on("end", () => done(String(r.statusCode)));
    });
    req.on("error", (e) => done(e.code || e.name));
    if (body) req.write(body);
    req.end();
  });
}
(async () => {
  const out = [await post(), await post(Buffer.alloc(1048576)), await post(), await post(Buffer.from("{}"))];
  console.log(out.join(" "));
  agent.destroy();
})();
