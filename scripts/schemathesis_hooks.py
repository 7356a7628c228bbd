"""Schemathesis hooks for scripts/schemathesis.sh: evidence uploads signed like an edge agent's.

With `[auth] http = "required"` an upload (`PUT /api/v1/snapshots/{id}`) must carry
`X-Csb-Signature`: HMAC-SHA256, keyed with the device's signing key, over
`PUT /api/v1/snapshots/{id}\\n{X-Csb-Device}\\n{X-Csb-Event}\\n` and the body
(`csb_wire::sign::sign_upload`). When CSB_ST_DEVICE and CSB_ST_DEVICE_SECRET name a device with
credentials, an upload that carries a signature header is sent as that device with the right
signature, so the signed path (stored, already stored, conflict, bad body) is exercised too.
Uploads sent without the header (schemathesis's `ignored_auth` check) stay unsigned and must be
refused with 401.
"""

import hashlib
import hmac
import os

import schemathesis

DEVICE = os.environ.get("CSB_ST_DEVICE")
SECRET = os.environ.get("CSB_ST_DEVICE_SECRET")


def _signing_key(secret: str) -> bytes:
    # csb_wire::sign::signing_key
    return hmac.new(secret.encode(), b"csb payload signature v1", hashlib.sha256).digest()


def _header(headers: dict, name: str):
    return next((k for k in headers if k.lower() == name.lower()), None)


@schemathesis.hook
def before_call(ctx, case, kwargs):
    if not (DEVICE and SECRET):
        return
    if case.method.upper() != "PUT" or case.operation.path != "/api/v1/snapshots/{id}":
        return
    headers = dict(case.headers or {})
    signature = _header(headers, "X-Csb-Signature")
    body = case.body
    # Generated binary bodies are schemathesis `Binary` objects: the bytes are in `.data`.
    body = getattr(body, "data", body)
    if isinstance(body, str):
        body = body.encode()
    if signature is None or not isinstance(body, (bytes, bytearray)):
        return
    for k in [k for k in headers if k.lower() == "x-csb-device"]:
        del headers[k]
    headers["X-Csb-Device"] = DEVICE
    event_name = _header(headers, "X-Csb-Event")
    event = headers[event_name] if event_name else ""
    upload_id = str((case.path_parameters or {}).get("id", ""))
    signed = b"".join(
        [
            b"PUT /api/v1/snapshots/",
            upload_id.encode(),
            b"\n",
            DEVICE.encode(),
            b"\n",
            str(event).encode(),
            b"\n",
            bytes(body),
        ]
    )
    headers[signature] = hmac.new(_signing_key(SECRET), signed, hashlib.sha256).hexdigest()
    case.headers = headers
