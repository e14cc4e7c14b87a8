"""The inference benchmark's own arithmetic: interleaved timing and the INT8 ceiling."""

from types import SimpleNamespace

from benchmarks.inference import encoder_gemms, int8_floor_ms, time_interleaved


def test_int8_floor_is_each_layers_int8_gemms_plus_attention_products_at_the_fp32_rate():
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    assert encoder_gemms(config, 10) == {"qkv": (10, 4, 12), "attention_out": (10, 4, 4), "ffn_in": (10, 4, 8),
                                         "ffn_out": (10, 8, 4)}
    kernel_ms = {"int8_qkv": 3.0, "int8_attention_out": 2.0, "int8_ffn_in": 4.0, "int8_ffn_out": 5.0,
                 "fp32_ffn_in": 10.0, "empty": 1.0}
    # GEMMs less the empty call: 2 + 1 + 3 + 4 = 10 ms a layer; FP32 at 9 ms per 10*4*8 MACs;
    # attention products 2 * tokens^2 * hidden = 800 MACs a layer -> 22.5 ms; two layers
    assert int8_floor_ms(config, batch=1, tokens=10, kernel_ms=kernel_ms) == 2 * (10 + 22.5)


def test_interleaved_timing_gives_every_contender_its_runs_in_rotating_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    figures = time_interleaved(calls, runs=6, rounds=3)
    assert set(figures) == {"a", "b", "c"} and all(f["p50_ms"] >= 0 for f in figures.values())
    rounds = order[3 * 3:]  # after 3 warm-up calls each: 3 rounds of (1 untimed + 2 timed) calls per contender
    assert len(rounds) == 3 * 3 * 3
    assert rounds[:9] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert rounds[9:12] == ["b"] * 3 and rounds[18:21] == ["c"] * 3, "each round starts one contender later"
