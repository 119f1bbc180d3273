#!/usr/bin/env python3
"""The fastest one caller can go against a ZIM endpoint: N back-to-back
QueryPeerMsg calls on one keep-alive connection, each signed as ZEGO's
server API asks (md5 of AppId, SignatureNonce, ServerSecret, Timestamp).
Prints calls per second (N / total time) and the median call in ms.
Used by scripts/bench b as the ceiling measured in the same run.
    zim_ceiling.py PORT APP_ID SECRET [N]"""
import hashlib, http.client, json, secrets, statistics, sys, time

port, app_id, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 300
conn = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"FromUserId": "lanea", "ToUserId": "laneb", "Limit": 1, "Next": 0})
took = []
start = time.perf_counter()
for _ in range(n):
    nonce, ts = secrets.token_hex(8), str(int(time.time()))
    sig = hashlib.md5((app_id + nonce + secret + ts).encode()).hexdigest()
    path = (f"/?Action=QueryPeerMsg&AppId={app_id}&SignatureNonce={nonce}&Timestamp={ts}"
            f"&SignatureVersion=2.0&Signature={sig}")
    t0 = time.perf_counter()
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    answer = conn.getresponse().read()
    took.append(time.perf_counter() - t0)
total = time.perf_counter() - start
code = json.loads(answer).get("Code")
print(f"{n / total:.1f} {statistics.median(took) * 1000:.2f} {code}")
