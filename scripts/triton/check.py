#!/usr/bin/env python3
"""Uses Triton's own Python HTTP client against a running setpoint daemon, as a user would.

    python scripts/triton/check.py --url 127.0.0.1:8000 [--model mlp] [--json-out FILE]

Every check prints PASS or FAIL with the exact error; the last line is "N passed, N failed".
Exit status 0 when everything passed, 1 otherwise.
"""

import argparse
import json
import sys
import traceback

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

RESULTS = []


def check(name):
    """Runs the decorated function at once as one named check."""

    def run(fn):
        try:
            detail = fn()
            RESULTS.append({"check": name, "passed": True, "detail": detail})
            print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            msg = f"{type(e).__name__}: {e}"
            RESULTS.append({"check": name, "passed": False, "error": msg})
            print(f"FAIL {name}: {msg}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc(limit=3, file=sys.stdout)
        return fn

    return run


def expect_error(fn, needle):
    """fn must raise InferenceServerException whose message contains needle."""
    try:
        fn()
    except InferenceServerException as e:
        text = str(e)
        assert needle in text, f"the error {text!r} does not say {needle!r}"
        return text
    raise AssertionError(f"no exception (expected one saying {needle!r})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="HOST:PORT of the daemon")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--json-out", help="write the results here as JSON")
    args = ap.parse_args()
    model = args.model
    client = httpclient.InferenceServerClient(url=args.url, verbose=False)
    state = {}

    @check("is_server_live")
    def _():
        assert client.is_server_live() is True

    @check("is_server_ready")
    def _():
        assert client.is_server_ready() is True

    @check("get_server_metadata")
    def _():
        md = client.get_server_metadata()
        assert md["name"] == "setpoint", md
        for ext in ("binary_tensor_data", "model_configuration", "statistics"):
            assert ext in md["extensions"], md
        return f"{md['name']} {md['version']} extensions={md['extensions']}"

    @check("is_model_ready")
    def _():
        assert client.is_model_ready(model) is True
        assert client.is_model_ready(model, model_version="1") is True

    @check("get_model_metadata")
    def _():
        md = client.get_model_metadata(model)
        inp, out = md["inputs"][0], md["outputs"][0]
        assert inp["datatype"] == "FP32" and out["datatype"] == "FP32", md
        state["input"], state["output"] = inp["name"], out["name"]
        state["features"], state["classes"] = int(inp["shape"][-1]), int(out["shape"][-1])
        md_v = client.get_model_metadata(model, model_version="1")
        assert md_v == md, (md_v, md)
        return f"{inp['name']}{inp['shape']} -> {out['name']}{out['shape']}"

    @check("get_model_config")
    def _():
        cfg = client.get_model_config(model)
        assert cfg["name"] == model, cfg
        assert cfg["max_batch_size"] >= 4, cfg
        assert cfg["input"][0]["dims"] == [state["features"]], cfg
        assert cfg["output"][0]["dims"] == [state["classes"]], cfg
        assert cfg["input"][0]["data_type"] == "TYPE_FP32", cfg
        return f"max_batch_size={cfg['max_batch_size']}"

    if "features" not in state:
        return finish(args)

    rng = np.random.default_rng(1)
    x4 = rng.standard_normal((4, state["features"])).astype(np.float32)

    def infer(rows, binary_input, binary_output, outputs=True, **kw):
        inp = httpclient.InferInput(state["input"], list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=binary_input)
        outs = (
            [httpclient.InferRequestedOutput(state["output"], binary_data=binary_output)]
            if outputs
            else None
        )
        res = client.infer(model, [inp], outputs=outs, **kw)
        y = res.as_numpy(state["output"])
        assert y is not None, f"no output {state['output']} in {res.get_response()}"
        assert y.dtype == np.float32, y.dtype
        assert y.shape == (rows.shape[0], state["classes"]), y.shape
        return y, res

    results = {}
    for batch in (1, 4):
        rows = x4[:batch]
        for bin_in in (False, True):
            for bin_out in (False, True):
                name = (
                    f"infer batch {batch}, input {'binary' if bin_in else 'JSON'}, "
                    f"output {'binary' if bin_out else 'JSON'}"
                )

                @check(name)
                def _(rows=rows, bin_in=bin_in, bin_out=bin_out, batch=batch):
                    y, res = infer(rows, bin_in, bin_out)
                    resp = res.get_response()
                    params = resp["outputs"][0].get("parameters", {})
                    assert ("binary_data_size" in params) == bin_out, resp
                    sums = y.sum(axis=1)
                    assert np.allclose(sums, 1.0, atol=1e-5), f"row sums {sums}"
                    results[(batch, bin_in, bin_out)] = y
                    return f"argmax {y.argmax(axis=1).tolist()}"

    @check("binary and JSON tensors give identical probabilities")
    def _():
        assert len(results) == 8, f"only {len(results)} of 8 infer checks produced output"
        for batch in (1, 4):
            ref = results[(batch, False, False)]
            for k, y in results.items():
                if k[0] == batch:
                    assert np.array_equal(y, ref), (
                        f"{k} differs from JSON/JSON by up to {np.abs(y - ref).max()}"
                    )
        # A row gives the same answer alone as in a batch of four.
        assert np.array_equal(results[(1, True, True)][0], results[(4, True, True)][0]), (
            "row 0 alone differs from row 0 in a batch of 4 by "
            f"{np.abs(results[(1, True, True)][0] - results[(4, True, True)][0]).max()}"
        )

    @check("infer with no outputs listed (all outputs, binary by default)")
    def _():
        y, res = infer(x4, True, True, outputs=False)
        params = res.get_response()["outputs"][0].get("parameters", {})
        assert "binary_data_size" in params, res.get_response()
        if (4, False, False) in results:
            assert np.array_equal(y, results[(4, False, False)])

    @check("infer with request_id, model_version and custom parameters")
    def _():
        _, res = infer(
            x4[:2], True, True, request_id="req-42", model_version="1",
            parameters={"my_param": "x"},
        )
        assert res.get_response().get("id") == "req-42", res.get_response()

    for algo in ("gzip", "deflate"):

        @check(f"infer with {algo}-compressed request and response")
        def _(algo=algo):
            y, _ = infer(
                x4, True, True,
                request_compression_algorithm=algo,
                response_compression_algorithm=algo,
            )
            if (4, False, False) in results:
                assert np.array_equal(y, results[(4, False, False)])

    @check("async_infer")
    def _():
        inp = httpclient.InferInput(state["input"], list(x4.shape), "FP32")
        inp.set_data_from_numpy(x4)
        handles = [client.async_infer(model, [inp]) for _ in range(8)]
        ys = [h.get_result().as_numpy(state["output"]) for h in handles]
        assert all(np.array_equal(ys[0], y) for y in ys)

    @check("get_inference_statistics")
    def _():
        st = client.get_inference_statistics(model)
        ms = st["model_stats"][0]
        assert ms["name"] == model, ms
        assert ms["inference_count"] >= 4 + 1 + 4 * 4, ms
        assert ms["execution_count"] >= 1, ms
        # As Triton counts them: success counts requests (20 answered above), inference_count
        # rows.
        assert 20 <= ms["inference_stats"]["success"]["count"] <= ms["inference_count"], ms
        assert len(ms["batch_stats"]) >= 1, ms
        all_st = client.get_inference_statistics()
        assert any(m["name"] == model for m in all_st["model_stats"]), all_st
        return (
            f"inference_count={ms['inference_count']} execution_count={ms['execution_count']} "
            f"success.count={ms['inference_stats']['success']['count']}"
        )

    @check("error: infer on an unknown model")
    def _():
        inp = httpclient.InferInput(state["input"], list(x4.shape), "FP32")
        inp.set_data_from_numpy(x4)
        return expect_error(lambda: client.infer("no-such-model", [inp]), "unknown model no-such-model")

    @check("error: metadata of an unknown model")
    def _():
        return expect_error(lambda: client.get_model_metadata("no-such-model"), "unknown model no-such-model")

    @check("error: config of an unknown model")
    def _():
        return expect_error(lambda: client.get_model_config("no-such-model"), "unknown model no-such-model")

    @check("error: statistics of an unknown model")
    def _():
        return expect_error(lambda: client.get_inference_statistics("no-such-model"), "unknown model no-such-model")

    @check("is_model_ready on an unknown model is False")
    def _():
        assert client.is_model_ready("no-such-model") is False

    @check("error: unknown model version")
    def _():
        return expect_error(lambda: client.get_model_metadata(model, model_version="7"), "no version 7")

    @check("error: wrong input width")
    def _():
        bad = np.zeros((2, state["features"] + 1), dtype=np.float32)
        inp = httpclient.InferInput(state["input"], list(bad.shape), "FP32")
        inp.set_data_from_numpy(bad)
        return expect_error(lambda: client.infer(model, [inp]), "expected shape")

    @check("error: wrong input name")
    def _():
        inp = httpclient.InferInput("not_the_input", list(x4.shape), "FP32")
        inp.set_data_from_numpy(x4)
        return expect_error(lambda: client.infer(model, [inp]), "unknown input")

    @check("error: wrong datatype")
    def _():
        x = x4.astype(np.float64)
        inp = httpclient.InferInput(state["input"], list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        return expect_error(lambda: client.infer(model, [inp]), "FP32")

    @check("error: unknown output requested")
    def _():
        inp = httpclient.InferInput(state["input"], list(x4.shape), "FP32")
        inp.set_data_from_numpy(x4)
        out = httpclient.InferRequestedOutput("nope")
        return expect_error(lambda: client.infer(model, [inp], outputs=[out]), "unknown output")

    # Model repository control is not part of setpoint's API; record what a user would see.
    @check("get_model_repository_index (informational: not served)")
    def _():
        try:
            idx = client.get_model_repository_index()
            return f"answered {idx}"
        except InferenceServerException as e:
            return f"refused as expected: {e}"

    client.close()
    return finish(args)


def finish(args):
    passed = sum(r["passed"] for r in RESULTS)
    failed = len(RESULTS) - passed
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(RESULTS, f, indent=1)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
