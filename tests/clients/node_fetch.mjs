// Node's fetch (undici, pooled): a streamed body past the limit must still read its 413.
const url = process.env.HOOK_URL;
function streamed(size) {
  let left = size;
  return new ReadableStream({
    pull(c) {
      if (left <= 0) return c.close();
      const n = Math.min(left, 65536);
      left -= n;
      c.enqueue(new Uint8Array(n));
    },
  });
}
async function post(body, stream) {
  try {
    const opts = { method: "POST" };
    if (stream) { opts.body = streamed(body); opts.duplex = "half"; } else if (body) opts.body = body;
    const r = await fetch(url, opts);
    await r.text();
    return String(r.status);
  } catch (e) {
    return (e.cause && e.cause.code) || e.name;
  }
}
const out = [await post(), await post(1048576, true), await post(), await post("{}")];
console.log(out.join(" "));
