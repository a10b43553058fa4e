# Pooled Python clients (urllib, requests, urllib3, httpx): trigger, too large a body, trigger.
import os, sys, urllib.request

URL = os.environ["HOOK_URL"]
BIG = b"x" * 1048576
which = sys.argv[1]


def run(post):
    out = []
    for body in (b"", BIG, b"", b"{}"):
        try:
            out.append(str(post(body)))
        except Exception as e:
            out.append(type(e).__name__)
    print(" ".join(out))


if which == "urllib":
    def post(body):
        try:
            with urllib.request.urlopen(urllib.request.Request(URL, data=body, method="POST"), timeout=20) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    run(post)
elif which == "requests":
    import requests
    s = requests.Session()
    run(lambda body: s.post(URL, data=body, timeout=20).status_code)
elif which == "urllib3":
    import urllib3
    pool = urllib3.PoolManager(maxsize=1, retries=False)
    run(lambda body: pool.request("POST", URL, body=body, timeout=20).status)
elif which == "httpx":
    import httpx
    c = httpx.Client(timeout=20)
    run(lambda body: c.post(URL, content=body).status_code)
