"""Asks cloudphone for transcode usage through both official SDKs, unchanged, pointed at it.

Environment: CP_ENDPOINT (http://127.0.0.1:port), CP_AK, CP_SK, CP_PROJECT, CP_DOMAIN,
CP_START / CP_END (Huawei form, YYYY-MM-DDThh:mm:ssZ), CP_VSTART / CP_VEND (RFC 3339).
Prints one JSON object: {"huawei": <ListTranscodeData body>, "volcengine": <response>}.
"""

import json
import os
import sys


def main():
    env = os.environ
    endpoint = env["CP_ENDPOINT"]
    out = {}

    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdklive.v2 import LiveClient, ListTranscodeDataRequest
    client = LiveClient.new_builder() \
        .with_credentials(BasicCredentials(env["CP_AK"], env["CP_SK"], env["CP_PROJECT"])) \
        .with_endpoints([endpoint]) \
        .build()
    response = client.list_transcode_data(ListTranscodeDataRequest(
        publish_domain=env["CP_DOMAIN"], start_time=env["CP_START"], end_time=env["CP_END"]))
    out["huawei"] = response.to_dict()

    from volcengine.live.v20230101.live_service import LiveService
    live = LiveService()
    live.set_ak(env["CP_AK"])
    live.set_sk(env["CP_SK"])
    live.set_host(endpoint.split("://", 1)[1])
    live.set_scheme(endpoint.split("://", 1)[0])
    out["volcengine"] = live.describe_live_transcode_data({
        "DomainList": [env["CP_DOMAIN"]],
        "StartTime": env["CP_VSTART"],
        "EndTime": env["CP_VEND"],
        "Aggregation": 86400,
    })
    if isinstance(out["volcengine"], str):
        out["volcengine"] = json.loads(out["volcengine"])
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
