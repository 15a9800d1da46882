"""Drives cloudphone's VS API (seed 003) with the official Alibaba SDK, alibabacloud-vs20181212.

Every request is signed by the SDK itself: ACS3-HMAC-SHA256 by default, or the document's
HMAC-SHA1 scheme (sent as POST) with `signature_algorithm='v2'`. Actions the SDK has no method
for (CreateMtsService, CreateRtmpGroupStreamurl) go through its generic `call_api`, as SDK
users call them. Nothing here computes a signature of its own.

Standard input: {"endpoint": "127.0.0.1:PORT", "operator": [ak, sk], "algorithm": null or "v2",
"user_id": "..."}. Prints one JSON object with each step's answer (see `main`).

`vs.py STEP` runs one step of the live end-to-end test (`live_e2e`) instead: standard input
{"endpoint", "key": [ak, sk], "algorithm", ...the step's arguments}; prints {"answer", "sent_unix_ms"}
(the answer's body, and when the SDK was called: the test times Forbid from it), or
{"code", "status"} and exits 1 when the server refuses it (see `STEPS`). `vs.py serve` does the
same for one JSON request a line, {"step", ...that input}, answering a line each with "ok" added.
"""

import json
import sys
import time

from alibabacloud_tea_openapi import utils_models as open_api_models
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_vs20181212 import models as vs_models
from alibabacloud_vs20181212.client import Client
from darabonba.runtime import RuntimeOptions


def client(endpoint, ak, sk, algorithm):
    config = open_api_models.Config(
        access_key_id=ak,
        access_key_secret=sk,
        endpoint=endpoint,
        protocol="http",
        signature_algorithm=algorithm,
    )
    return Client(config)


def runtime():
    # No retries: a refused call must show as refused, not be resent.
    return RuntimeOptions(autoretry=False, max_attempts=1)


def generic(c, action, query):
    params = open_api_models.Params(
        action=action,
        version="2018-12-12",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    request = open_api_models.OpenApiRequest(query=Utils.query(query))
    return c.call_api(params, request, runtime())["body"]


def refusal(call):
    try:
        call()
    except Exception as error:  # the SDK's ClientException/ServerException
        return {"code": getattr(error, "code", None), "status": getattr(error, "status_code", None)}
    return {"code": None, "status": 200}


def main():
    args = json.load(sys.stdin)
    endpoint, algorithm = args["endpoint"], args["algorithm"]
    operator = client(endpoint, args["operator"][0], args["operator"][1], algorithm)
    out = {}
    service = generic(
        operator,
        "CreateMtsService",
        {"UserId": args["user_id"], "AccessInfo": '{"AccessKeyId":"demo","AccessKeySecret":"demo"}'},
    )
    out["service"] = service
    tenant = client(endpoint, service["UserAccessKeyId"], service["UserAccessKeySecret"], algorithm)
    created = tenant.create_group_with_options(
        vs_models.CreateGroupRequest(
            name="sdk group",
            description="made by the SDK",
            region="cn-north-7",
            in_protocol="rtmp",
            out_protocol="flv,rtmp,hls",
            lazy_pull=False,
        ),
        runtime(),
    )
    group_id = created.body.id
    out["group_id"] = group_id
    out["describe_group"] = tenant.describe_group_with_options(
        vs_models.DescribeGroupRequest(id=group_id, include_stats=True), runtime()
    ).body.to_map()
    push = generic(
        tenant, "CreateRtmpGroupStreamurl", {"Id": group_id, "Name": "cam 1", "AccessInfo": "{}"}
    )
    out["push"] = push
    stream_id = push["StreamId"]
    out["stream"] = tenant.describe_stream_with_options(
        vs_models.DescribeStreamRequest(id=stream_id), runtime()
    ).body.to_map()
    # The SDK names ForbidVsStream's stream by AppName/StreamName, the document by Id.
    tenant.forbid_vs_stream_with_options(
        vs_models.ForbidVsStreamRequest(app_name="live", stream_name=stream_id), runtime()
    )
    out["forbidden_stream"] = tenant.describe_stream_with_options(
        vs_models.DescribeStreamRequest(id=stream_id), runtime()
    ).body.to_map()
    out["groups"] = tenant.describe_groups_with_options(
        vs_models.DescribeGroupsRequest(
            page_num=1, page_size=10, sort_by="createdTime", sort_direction="desc"
        ),
        runtime(),
    ).body.to_map()
    out["not_found"] = refusal(
        lambda: tenant.describe_group_with_options(
            vs_models.DescribeGroupRequest(id="1000000000000001"), runtime()
        )
    )
    out["tenant_on_service_action"] = refusal(
        lambda: generic(tenant, "GetMtsServiceStatus", {"UserId": args["user_id"]})
    )
    json.dump(out, sys.stdout)


def step_service(c, a):
    return generic(
        c, "CreateMtsService", {"UserId": a["user_id"], "AccessInfo": '{"AccessKeyId":"demo","AccessKeySecret":"demo"}'}
    )


def step_group(c, a):
    created = c.create_group_with_options(
        vs_models.CreateGroupRequest(
            name=a["name"], region="cn-north-7", in_protocol="rtmp", out_protocol=a["out_protocol"]
        ),
        runtime(),
    )
    return created.body.to_map()


def step_push(c, a):
    return generic(c, "CreateRtmpGroupStreamurl", {"Id": a["group_id"], "Name": a["name"], "AccessInfo": "{}"})


def step_describe_stream(c, a):
    return c.describe_stream_with_options(vs_models.DescribeStreamRequest(id=a["id"]), runtime()).body.to_map()


def step_stream_url(c, a):
    query = {"Id": a["id"], "OutProtocol": a["out_protocol"], "AuthKey": a["auth_key"], "Expire": "600"}
    return generic(c, "DescribeStreamURL", query)


def step_screen_show(c, a):
    return generic(c, "ScreenShowStreams", {"GroupId": a["group_id"], "PageNum": "1", "PageSize": "20"})


def step_forbid(c, a):
    # The SDK names the stream by AppName/StreamName (the document by Id).
    request = vs_models.ForbidVsStreamRequest(app_name="live", stream_name=a["id"])
    return c.forbid_vs_stream_with_options(request, runtime()).body.to_map()


def step_resume(c, a):
    request = vs_models.ResumeVsStreamRequest(app_name="live", stream_name=a["id"])
    return c.resume_vs_stream_with_options(request, runtime()).body.to_map()


STEPS = {
    "service": step_service,
    "group": step_group,
    "push": step_push,
    "describe_stream": step_describe_stream,
    "stream_url": step_stream_url,
    "screen_show": step_screen_show,
    "forbid": step_forbid,
    "resume": step_resume,
}


def run_step(name, args):
    """One step: ({"answer", "sent_unix_ms"}, True), or ({"code", "status", "message"}, False)
    when the server refused it."""
    c = client(args["endpoint"], args["key"][0], args["key"][1], args["algorithm"])
    sent_unix_ms = int(time.time() * 1000)
    try:
        return {"answer": STEPS[name](c, args), "sent_unix_ms": sent_unix_ms}, True
    except Exception as error:  # the SDK's ClientException/ServerException
        return {"code": getattr(error, "code", None), "status": getattr(error, "status_code", None),
                "message": str(error)}, False


def serve():
    # One interpreter for a whole scenario: starting Python and importing the SDK costs about
    # a second per call on a loaded 2-core machine, and the test polls DescribeStream.
    for line in sys.stdin:
        request = json.loads(line)
        out, ok = run_step(request.pop("step"), request)
        out["ok"] = ok
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    elif len(sys.argv) > 1:
        out, ok = run_step(sys.argv[1], json.load(sys.stdin))
        json.dump(out, sys.stdout)
        sys.exit(0 if ok else 1)
    else:
        main()
