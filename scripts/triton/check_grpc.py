#!/usr/bin/env python3
"""Uses Triton's own Python gRPC client against a running setpoint daemon, as a user would.

    python scripts/triton/check_grpc.py --url 127.0.0.1:8001 --http-url 127.0.0.1:8000 \
        [--model mlp] [--json-out FILE]

The gRPC half of check.py: the same calls where gRPC has them, each answer compared with
what Triton's HTTP client gets from the same daemon (--http-url) for the same request.
Every check prints PASS or FAIL with the exact error; the last line is "N passed, N failed".
Exit status 0 when everything passed, 1 otherwise.
"""

import argparse
import os
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

# The check runner and its results list are check.py's, so both halves report alike.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check import RESULTS, check  # noqa: E402
from check import finish as report  # noqa: E402


def catch(fn):
    """The InferenceServerException fn raises; an AssertionError when it raises none."""
    try:
        fn()
    except InferenceServerException as e:
        return e
    raise AssertionError("no exception")


def expect_error(fn, needle, status=None):
    """fn must raise InferenceServerException whose message contains needle (and whose gRPC
    status is `status`, e.g. "StatusCode.NOT_FOUND", when given)."""
    e = catch(fn)
    text = str(e)
    assert needle in text, f"the error {text!r} does not say {needle!r}"
    if status is not None:
        assert e.status() == status, f"the error {text!r} has status {e.status()}, not {status}"
    return text


def same_error(grpc_fn, http_fn, needle, status):
    """Both clients refuse the same request: the gRPC error has `status`, says `needle`, and
    its message is exactly the one the HTTP client gets."""
    g = catch(grpc_fn)
    h = catch(http_fn)
    assert needle in g.message(), f"the gRPC error {str(g)!r} does not say {needle!r}"
    assert g.status() == status, f"the gRPC error {str(g)!r} has status {g.status()}, not {status}"
    assert g.message() == h.message(), (
        f"the gRPC message {g.message()!r} differs from HTTP's {h.message()!r}"
    )
    return f"{g.status()} {g.message()!r} (HTTP {h.status()}, same text)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="HOST:PORT of the daemon's gRPC listener")
    ap.add_argument("--http-url", required=True, help="HOST:PORT of the daemon's HTTP listener")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--json-out", help="write the results here as JSON")
    args = ap.parse_args()
    model = args.model
    client = grpcclient.InferenceServerClient(url=args.url, verbose=False)
    http = httpclient.InferenceServerClient(url=args.http_url, verbose=False)
    state = {}
    NOT_FOUND = "StatusCode.NOT_FOUND"
    INVALID = "StatusCode.INVALID_ARGUMENT"

    @check("is_server_live")
    def _():
        assert client.is_server_live() is True

    @check("is_server_ready")
    def _():
        assert client.is_server_ready() is True

    @check("get_server_metadata")
    def _():
        md = client.get_server_metadata()
        assert md.name == "setpoint", md
        for ext in ("binary_tensor_data", "model_configuration", "statistics"):
            assert ext in md.extensions, md
        js = client.get_server_metadata(as_json=True)
        assert js["name"] == md.name and js["version"] == md.version, js
        assert js == http.get_server_metadata(), (js, http.get_server_metadata())
        return f"{md.name} {md.version} extensions={list(md.extensions)} (as HTTP's)"

    @check("is_model_ready")
    def _():
        assert client.is_model_ready(model) is True
        assert client.is_model_ready(model, model_version="1") is True

    @check("is_model_ready on an unknown model is False")
    def _():
        assert client.is_model_ready("no-such-model") is False
        assert client.is_model_ready(model, model_version="7") is False

    @check("get_model_metadata (as_json=True)")
    def _():
        md = client.get_model_metadata(model, as_json=True)
        inp, out = md["inputs"][0], md["outputs"][0]
        assert inp["datatype"] == "FP32" and out["datatype"] == "FP32", md
        state["input"], state["output"] = inp["name"], out["name"]
        # MessageToJson writes int64 as strings.
        state["features"], state["classes"] = int(inp["shape"][-1]), int(out["shape"][-1])
        hm = http.get_model_metadata(model)
        assert md["name"] == hm["name"] and md["platform"] == hm["platform"], (md, hm)
        assert md["versions"] == hm["versions"], (md, hm)
        for key in ("inputs", "outputs"):
            for g, h in zip(md[key], hm[key], strict=True):
                assert (g["name"], g["datatype"]) == (h["name"], h["datatype"]), (g, h)
                assert [int(d) for d in g["shape"]] == h["shape"], (g, h)
        md_v = client.get_model_metadata(model, model_version="1", as_json=True)
        assert md_v == md, (md_v, md)
        return f"{inp['name']}{inp['shape']} -> {out['name']}{out['shape']} (as HTTP's)"

    @check("get_model_metadata (protobuf)")
    def _():
        md = client.get_model_metadata(model)
        assert md.name == model, md
        assert md.inputs[0].name == state["input"], md
        assert list(md.inputs[0].shape) == [-1, state["features"]], md
        assert list(md.outputs[0].shape) == [-1, state["classes"]], md
        assert md.outputs[0].datatype == "FP32", md
        return f"versions={list(md.versions)} platform={md.platform!r}"

    @check("get_model_config")
    def _():
        cfg = client.get_model_config(model).config
        assert cfg.name == model, cfg
        assert cfg.max_batch_size >= 4, cfg
        assert list(cfg.input[0].dims) == [state["features"]], cfg
        assert list(cfg.output[0].dims) == [state["classes"]], cfg
        assert cfg.input[0].data_type == grpcclient.model_config_pb2.TYPE_FP32, cfg
        js = client.get_model_config(model, as_json=True)["config"]
        hc = http.get_model_config(model)
        assert js["name"] == hc["name"], (js, hc)
        assert int(js["max_batch_size"]) == hc["max_batch_size"], (js, hc)
        assert js["input"][0]["data_type"] == hc["input"][0]["data_type"], (js, hc)
        return f"max_batch_size={cfg.max_batch_size} (as HTTP's)"

    if "features" not in state:
        return finish(args, client, http)

    rng = np.random.default_rng(1)
    x4 = rng.standard_normal((4, state["features"])).astype(np.float32)

    def grpc_input(rows, name=None, datatype="FP32"):
        inp = grpcclient.InferInput(name or state["input"], list(rows.shape), datatype)
        inp.set_data_from_numpy(rows)
        return inp

    def http_input(rows, name=None, datatype="FP32"):
        inp = httpclient.InferInput(name or state["input"], list(rows.shape), datatype)
        inp.set_data_from_numpy(rows, binary_data=True)
        return inp

    def infer(rows, **kw):
        res = client.infer(model, [grpc_input(rows)], **kw)
        y = res.as_numpy(state["output"])
        assert y is not None, f"no output {state['output']} in {res.get_response()}"
        assert y.dtype == np.float32, y.dtype
        assert y.shape == (rows.shape[0], state["classes"]), y.shape
        return y, res

    def stats():
        ms = client.get_inference_statistics(model).model_stats[0]
        return ms.inference_count, ms.execution_count, ms.inference_stats.success.count

    before = {}

    @check("statistics before inference")
    def _():
        before["inference"], before["execution"], before["success"] = stats()
        return f"inference_count={before['inference']}"

    results = {}
    rows_sent = requests_sent = 0
    for batch in (1, 4):

        @check(f"infer batch {batch} (raw_input_contents), same probabilities as HTTP")
        def _(batch=batch):
            nonlocal rows_sent, requests_sent
            rows = x4[:batch]
            y, res = infer(rows, outputs=[grpcclient.InferRequestedOutput(state["output"])])
            rows_sent += batch
            requests_sent += 1
            resp = res.get_response()
            assert len(resp.raw_output_contents) == 1, "the answer is not in raw_output_contents"
            assert resp.model_name == model, resp.model_name
            sums = y.sum(axis=1)
            assert np.allclose(sums, 1.0, atol=1e-5), f"row sums {sums}"
            h = http.infer(model, [http_input(rows)]).as_numpy(state["output"])
            rows_sent += batch  # HTTP and gRPC count into the same statistics
            requests_sent += 1
            assert np.allclose(y, h, atol=1e-6), f"differs from HTTP by up to {np.abs(y - h).max()}"
            results[batch] = y
            return f"argmax {y.argmax(axis=1).tolist()}, max |gRPC-HTTP| {np.abs(y - h).max():.1e}"

    @check("a row gives the same answer alone as in a batch of four")
    def _():
        assert 1 in results and 4 in results, "an infer check failed"
        assert np.allclose(results[1][0], results[4][0], atol=1e-6), (
            f"differs by up to {np.abs(results[1][0] - results[4][0]).max()}"
        )

    @check("infer with no outputs listed, request_id and model_version")
    def _():
        nonlocal rows_sent, requests_sent
        y, res = infer(x4[:2], request_id="req-42", model_version="1")
        rows_sent += 2
        requests_sent += 1
        assert res.get_response().id == "req-42", res.get_response().id
        if 4 in results:
            assert np.allclose(y, results[4][:2], atol=1e-6)

    @check("async_infer")
    def _():
        nonlocal rows_sent, requests_sent
        done, answers = threading.Event(), []

        def cb(result, error):
            answers.append((result, error))
            if len(answers) == 8:
                done.set()

        for _ in range(8):
            client.async_infer(model, [grpc_input(x4)], cb)
        assert done.wait(30), f"{len(answers)} of 8 answers within 30 s"
        rows_sent += 8 * 4
        requests_sent += 8
        errors = [e for _, e in answers if e is not None]
        assert not errors, errors
        ys = [r.as_numpy(state["output"]) for r, _ in answers]
        assert all(np.array_equal(ys[0], y) for y in ys)

    @check("client_timeout: a generous one is met")
    def _():
        nonlocal rows_sent, requests_sent
        infer(x4, client_timeout=30.0)
        rows_sent += 4
        requests_sent += 1

    @check("get_inference_statistics: counts rise by the rows sent (gRPC and HTTP)")
    def _():
        inference, execution, success = stats()
        grown = inference - before["inference"]
        assert grown == rows_sent, f"inference_count rose by {grown}; {rows_sent} rows sent"
        assert execution > before["execution"], (execution, before)
        # As Triton counts them: success counts requests, inference_count rows.
        answered = success - before["success"]
        assert answered == requests_sent, f"success.count rose by {answered}; {requests_sent} sent"
        all_st = client.get_inference_statistics(as_json=True)
        assert any(m["name"] == model for m in all_st["model_stats"]), all_st
        h = http.get_inference_statistics(model)["model_stats"][0]
        assert h["inference_count"] == inference, (h, inference)
        return (
            f"inference_count +{grown} for {rows_sent} rows, success.count +{answered} for "
            f"{requests_sent} requests, execution_count +{execution - before['execution']}"
        )

    @check("client_timeout: a call that outlasts it ends with DEADLINE_EXCEEDED")
    def _():
        # gRPC's deadlines have millisecond granularity: a 4-row answer (~0.3 ms on
        # loopback) can beat even a 1 us client_timeout, so the call is half a queue's worth
        # of rows (512, over a millisecond). The deadline is enforced by the client, or by setpoint
        # from grpc-timeout, whichever sees it first; either way DEADLINE_EXCEEDED.
        big = np.tile(x4, (128, 1))
        seen = []
        for _ in range(5):
            time.sleep(0.1)  # rows of a call given up on may still be queued: let them go
            try:
                client.infer(model, [grpc_input(big)], client_timeout=1e-6)
                seen.append("answered")
            except InferenceServerException as e:
                assert e.status() == "StatusCode.DEADLINE_EXCEEDED", str(e)
                # setpoint's own answer names the deadline, the only timeout the client set.
                if "no answer within" in e.message():
                    assert "the client's deadline (grpc-timeout)" in e.message(), str(e)
                seen.append(e.message())
        assert any(s != "answered" for s in seen), f"every call answered in time: {seen}"
        infer(x4[:1])  # the client and the server go on
        return "; ".join(sorted(set(seen)))

    @check("error: the request's timeout parameter passes (setpoint's deadline)")
    def _():
        return same_error(
            lambda: client.infer(model, [grpc_input(x4)], timeout=1),
            lambda: http.infer(model, [http_input(x4)], timeout=1),
            "no answer within the request's timeout", "StatusCode.DEADLINE_EXCEEDED",
        )

    # Errors: the gRPC code the error map gives, and the very text HTTP gives.
    @check("error: infer on an unknown model")
    def _():
        return same_error(
            lambda: client.infer("no-such-model", [grpc_input(x4)]),
            lambda: http.infer("no-such-model", [http_input(x4)]),
            "unknown model no-such-model", NOT_FOUND,
        )

    for what, call in (
        ("metadata", "get_model_metadata"),
        ("config", "get_model_config"),
        ("statistics", "get_inference_statistics"),
    ):

        @check(f"error: {what} of an unknown model")
        def _(call=call):
            return same_error(
                lambda: getattr(client, call)("no-such-model"),
                lambda: getattr(http, call)("no-such-model"),
                "unknown model no-such-model", NOT_FOUND,
            )

    @check("error: unknown model version")
    def _():
        return same_error(
            lambda: client.get_model_metadata(model, model_version="7"),
            lambda: http.get_model_metadata(model, model_version="7"),
            "no version 7", NOT_FOUND,
        )

    @check("error: wrong input width")
    def _():
        bad = np.zeros((2, state["features"] + 1), dtype=np.float32)
        return same_error(
            lambda: client.infer(model, [grpc_input(bad)]),
            lambda: http.infer(model, [http_input(bad)]),
            "expected shape", INVALID,
        )

    @check("error: wrong input name")
    def _():
        return same_error(
            lambda: client.infer(model, [grpc_input(x4, name="not_the_input")]),
            lambda: http.infer(model, [http_input(x4, name="not_the_input")]),
            "unknown input", INVALID,
        )

    @check("error: wrong datatype")
    def _():
        x = x4.astype(np.float64)
        return same_error(
            lambda: client.infer(model, [grpc_input(x, datatype="FP64")]),
            lambda: http.infer(model, [http_input(x, datatype="FP64")]),
            "expected datatype FP32", INVALID,
        )

    @check("error: unknown output requested")
    def _():
        return same_error(
            lambda: client.infer(
                model, [grpc_input(x4)], outputs=[grpcclient.InferRequestedOutput("nope")]
            ),
            lambda: http.infer(
                model, [http_input(x4)], outputs=[httpclient.InferRequestedOutput("nope")]
            ),
            "unknown output", INVALID,
        )

    # Streaming: answers come in completion order, matched by id; a bad request is an error
    # through the callback and the stream goes on.
    @check("stream: start_stream, async_stream_infer x8 with one bad request, stop_stream")
    def _():
        lock, answered = threading.Lock(), threading.Event()
        oks, errors = {}, []
        n_good = 7

        def cb(result, error):
            with lock:
                if error is not None:
                    errors.append(error)
                else:
                    oks[result.get_response().id] = result.as_numpy(state["output"])
                if len(oks) + len(errors) == n_good + 1:
                    answered.set()

        client.start_stream(callback=cb)
        try:
            expected = {}
            for i in range(n_good + 1):
                if i == 3:
                    bad = np.zeros((1, state["features"] + 1), dtype=np.float32)
                    client.async_stream_infer(model, [grpc_input(bad)], request_id="bad-3")
                    continue
                rows = x4[: 1 + i % 4]
                expected[f"s-{i}"] = rows
                client.async_stream_infer(model, [grpc_input(rows)], request_id=f"s-{i}")
            assert answered.wait(30), f"{len(oks)} answers, {len(errors)} errors within 30 s"
        finally:
            client.stop_stream()
        assert len(errors) == 1, f"errors: {[str(e) for e in errors]}"
        assert "expected shape" in errors[0].message(), str(errors[0])
        assert sorted(oks) == sorted(expected), f"ids answered {sorted(oks)}"
        for rid, rows in expected.items():
            y = oks[rid]
            assert y.shape == (rows.shape[0], state["classes"]), (rid, y.shape)
            if 4 in results:
                assert np.allclose(y, results[4][: rows.shape[0]], atol=1e-6), rid
        return f"{len(oks)} answers matched by id, error {errors[0].message()!r}"

    @check("stream: a second stream after stop_stream works")
    def _():
        got = []
        done = threading.Event()

        def cb(result, error):
            got.append((result, error))
            done.set()

        client.start_stream(callback=cb)
        try:
            client.async_stream_infer(model, [grpc_input(x4[:1])], request_id="again")
            assert done.wait(30), "no answer within 30 s"
        finally:
            client.stop_stream()
        result, error = got[0]
        assert error is None, str(error)
        assert result.get_response().id == "again", result.get_response().id

    # Model repository control is not part of setpoint's API; record what a user would see.
    @check("get_model_repository_index (informational)")
    def _():
        try:
            idx = client.get_model_repository_index(as_json=True)
            return f"answered {idx}"
        except InferenceServerException as e:
            return f"refused: {e}"

    @check("load_model (informational: not served)")
    def _():
        try:
            client.load_model(model)
            return "answered"
        except InferenceServerException as e:
            return f"refused as expected: {e}"

    return finish(args, client, http)


def finish(args, client, http):
    client.close()
    http.close()
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
