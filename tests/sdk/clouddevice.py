"""Signs CloudDevice (and IAM) calls with the official Huawei SDK core and sends them to cloudphone.

Each call is signed by huaweicloudsdkcore exactly as every Huawei SDK client signs: the
credentials' `sign_request` (`BasicCredentials` adds `X-Project-Id`, `GlobalCredentials`
`X-Domain-Id`), which runs the SDK's `Signer` (`SDK-HMAC-SHA256`, `X-Sdk-Date`, `Host`).
Nothing here computes a signature of its own.

Environment: CP_ENDPOINT (http://127.0.0.1:port). Standard input: a JSON list of calls, each
{"name", "ak", "sk", "project" (BasicCredentials' project id, or null for none),
 "domain" (when present: GlobalCredentials with this domain id instead), "method", "path",
 "query": [[k, v], ...], "headers": {...}, "body": string or null,
 "send_body": string (optional: sent instead of the signed body)}.
Prints a JSON list of {"name", "status", "authorization", "body"} in the same order.
"""

import json
import os
import sys

import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer


def signed(endpoint, call):
    scheme, host = endpoint.split("://", 1)
    if "domain" in call:
        credentials = GlobalCredentials(call["ak"], call["sk"], call["domain"])
    else:
        credentials = BasicCredentials(call["ak"], call["sk"], call["project"])
    headers = {"Content-Type": "application/json"}
    headers.update(call.get("headers") or {})
    request = SdkRequest(
        method=call["method"],
        schema=scheme,
        host=host,
        resource_path=call["path"],
        query_params=[tuple(p) for p in call.get("query") or []],
        header_params=headers,
        body=call.get("body") or "",
    )
    request = credentials.sign_request(request)
    authorization = request.header_params["Authorization"]
    # The default algorithm: the SDK's own `Signer`, not a derived or SM3 variant.
    assert authorization.startswith(Signer._ALGORITHM + " "), authorization
    return request, authorization


def main():
    endpoint = os.environ["CP_ENDPOINT"]
    out = []
    for call in json.load(sys.stdin):
        request, authorization = signed(endpoint, call)
        body = call.get("send_body", request.body)
        response = requests.request(
            request.method,
            endpoint + request.uri,
            headers=request.header_params,
            data=body if body else None,
            timeout=30,
        )
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        out.append({"name": call["name"], "status": response.status_code,
                    "authorization": authorization, "body": answer})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
