"""Signs one request with each official SDK against a local capture server and prints what arrived.

The output (JSON) is the raw request as the server saw it: method, path, raw query, headers in
arrival order, body. `crates/cloudphone-usage/tests/vectors/*.json` were made with it:

    target/sdk-venv/bin/python tests/sdk/capture.py > crates/cloudphone-usage/tests/vectors/sdk.json

The secrets below are test-only values; they sign nothing real.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AK = "CPAKTESTVECTOR0000001"
SK = "cpsk-test-vector-secret-0123456789abcdef"
PROJECT = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

captured = []


class Capture(BaseHTTPRequestHandler):
    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        captured.append({
            "method": self.command,
            "path": path,
            "query": query,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8"),
        })
        if path.startswith("/v2/"):
            out = {"transcode_data_list": [], "summary_list": []}
        else:
            out = {"ResponseMetadata": {"RequestId": "x", "Action": "DescribeLiveTranscodeData",
                                        "Version": "2023-01-01", "Service": "live", "Region": "cn-north-1"},
                   "Result": {}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d" % port

    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdklive.v2 import LiveClient, ListTranscodeDataRequest
    client = LiveClient.new_builder() \
        .with_credentials(BasicCredentials(AK, SK, PROJECT)) \
        .with_endpoints([endpoint]) \
        .build()
    client.list_transcode_data(ListTranscodeDataRequest(
        publish_domain="live.example.com", stream="inst-1",
        start_time="2020-08-18T07:20:40Z", end_time="2020-08-18T08:00:00Z"))

    from volcengine.live.v20230101.live_service import LiveService
    live = LiveService()
    live.set_ak(AK)
    live.set_sk(SK)
    live.set_host("127.0.0.1:%d" % port)
    live.set_scheme("http")
    live.describe_live_transcode_data({
        "DomainList": ["live.example.com"],
        "StartTime": "2021-04-13T00:00:00+08:00",
        "EndTime": "2021-04-14T00:00:00+08:00",
        "Aggregation": 86400,
        "App": "cloudphone",
    })
    server.shutdown()
    json.dump({"ak": AK, "sk": SK, "project_id": PROJECT, "requests": captured}, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
