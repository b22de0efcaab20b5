"""The communication budget in one process: codecs, wire format, caps, error feedback, channels."""
import numpy as np
import pytest

from fedgmi_mpi import compression
from fedgmi_mpi.algorithms.base import Broadcast, ClientUpload, ModelLayout
from fedgmi_mpi.compression import hadamard, quantize
from fedgmi_mpi.compression.channel import Downlink, Uplink, uplink_header_bytes, waterfill
from fedgmi_mpi.compression.wire import Reader, Writer, pack_bits, read_rice, rice_max_bytes, unpack_bits, write_rice
from fedgmi_mpi.config import COMPRESSION_METHODS, Config
from fedgmi_mpi.errors import UserError

# A model shaped like FedGMI's: rows = components, segments = parameter tensors of very different sizes.
LAYOUT = ModelLayout(rows=4, row_size=3000, segments=(1500, 20, 1024, 8, 400, 48), control_bytes=40)
SIZES = LAYOUT.segments


def _delta(seed: int, rows: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.repeat([1e-2, 1e-3, 5e-3, 1e-4, 2e-2, 1e-3], SIZES)  # tensors move by different amounts
    return (rng.standard_t(4, size=(rows, LAYOUT.row_size)) * scales).astype(np.float32)


def _upload(seed: int, weights=(40.0, 25.0, 0.5, 9.0)) -> ClientUpload:
    return ClientUpload(delta=_delta(seed), weights=np.array(weights), statistics=np.zeros(0))


def _uplink(method: str, bits: float, select: bool = True, feedback: bool | None = None, value_bits: int = 8,
            residual_dtype: str = "float32") -> Uplink:
    feedback = compression.codec(method).biased if feedback is None else feedback
    codec = compression.codec(method, value_bits, unbiased=not feedback)
    cap = None if bits >= 32 and method == "none" else int(np.ceil(bits * LAYOUT.parameters / 8))
    return Uplink(codec, LAYOUT, cap, seed=7, select=select, threshold=0.02, error_feedback=feedback,
                  residual_dtype=residual_dtype)


# ---- the wire -------------------------------------------------------------------------------

@pytest.mark.parametrize("width", range(1, 9))
def test_fixed_width_bit_fields_round_trip(width):
    values = np.random.default_rng(width).integers(0, 2**width, size=1001)
    raw = pack_bits(values, width)
    assert len(raw) == (1001 * width + 7) // 8
    assert np.array_equal(unpack_bits(np.frombuffer(raw, np.uint8), 1001, width), values)


@pytest.mark.parametrize("count,size", [(0, 100), (1, 1), (1, 5000), (7, 7), (50, 5000), (4000, 5000), (3, 2**20)])
def test_rice_coded_index_sets_round_trip_within_their_bound(count, size):
    rng = np.random.default_rng(count + size)
    indices = np.sort(rng.choice(size, count, replace=False))
    out = Writer()
    write_rice(out, indices, size)
    out.raw(b"tail")  # what follows must be found exactly where the index set ends
    data = out.getvalue()
    assert len(data) - 4 <= rice_max_bytes(count, size)
    src = Reader(data)
    assert np.array_equal(read_rice(src, count, size), indices)
    assert bytes(src.array(4, np.uint8)) == b"tail"


def test_waterfill_respects_floors_ceilings_and_total():
    budgets = waterfill(1000, np.array([5.0, 1.0, 1.0, 0.0]), np.array([10, 10, 10, 10]), np.array([300, 900, 900, 900]))
    assert budgets.sum() <= 1000 and budgets[0] == 300  # the heavy item is capped; its excess goes to the others
    assert budgets[1] == budgets[2] > 300 and budgets[3] == 10


# ---- codecs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", COMPRESSION_METHODS)
@pytest.mark.parametrize("bits", [32, 8, 2, 1, 0.3, 0.05])
def test_every_codec_stays_within_each_budget_and_reads_back_exactly_what_it_wrote(method, bits):
    codec = compression.codec(method, 8)
    pieces = [_delta(1)[:, :1500], _delta(2)[:3, 1500:1520] * 0]  # a large and a small (all-zero) segment
    pieces = [np.asarray(p[:3], dtype=np.float32) for p in pieces]
    budgets = np.array([[int(bits * p.shape[1] / 8) for p in pieces]] * 3)
    budgets[1] //= 3  # rows may have different budgets
    out = Writer()
    codec.encode(pieces, budgets, np.random.default_rng(0), np.random.default_rng(1), out)
    data = out.getvalue()
    assert len(data) == out.size <= budgets.sum()
    src = Reader(data)
    decoded = codec.decode(tuple(p.shape[1] for p in pieces), budgets, np.random.default_rng(0), src)
    assert src.remaining() == 0  # the receiver consumes exactly what was sent
    for piece, got, column in zip(pieces, decoded, budgets.T):
        assert got.shape == piece.shape and got.dtype == np.float32 and np.all(np.isfinite(got))
        for row in range(3):
            if column[row] < codec.min_bytes(piece.shape[1]):
                assert not got[row].any()  # skipped rows decode to zeros on both sides
    if method == "none" and bits == 32:  # rows 0 and 2 have the whole float32 budget
        assert all(np.array_equal(p[[0, 2]], g[[0, 2]]) for p, g in zip(pieces, decoded))


def _mean_error(method: str, bits: float, trials: int, value_bits: int = 8) -> tuple[float, float]:
    """(normalised squared error of the mean over trials, mean normalised error of one trial)."""
    codec = compression.codec(method, value_bits)
    x = _delta(3, rows=1)[:, :1500]
    budget = np.array([[int(bits * 1500 / 8)]])
    total, single = np.zeros_like(x, dtype=np.float64), 0.0
    for t in range(trials):
        out = Writer()
        codec.encode([x], budget, np.random.default_rng([t, 0]), np.random.default_rng([t, 1]), out)
        (got,) = codec.decode((1500,), budget, np.random.default_rng([t, 0]), Reader(out.getvalue()))
        total += got
        single += float(((got - x) ** 2).sum() / (x**2).sum())
    return float(((total / trials - x) ** 2).sum() / (x**2).sum()), single / trials


@pytest.mark.parametrize("method,bits", [("hadamard", 1), ("hadamard", 0.25), ("hadamard", 3), ("qsgd", 2),
                                         ("randk", 1)])
def test_unbiased_methods_average_to_the_truth(method, bits):
    # For an unbiased method with per-trial error v, the mean of n trials has expected error v / n.
    # Tolerance: 3 v / n (and far below v, which a biased method's mean error stays near).
    trials = 300
    mean_error, single_error = _mean_error(method, bits, trials)
    assert single_error > 0.01  # the method really compresses at this budget
    assert mean_error < 3 * single_error / trials, (mean_error, single_error)


def test_the_unbiasedness_check_catches_a_biased_method():
    mean_error, single_error = _mean_error("topk", 1, 100)
    assert mean_error > 0.5 * single_error  # top-k's error does not average away: it needs error feedback


def _hard_rows() -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    spike = np.zeros(4096, dtype=np.float32)
    spike[7], spike[100:149] = 1.0, 0.01
    padded_block = np.ones(513, dtype=np.float32)  # one value in the last block of 512
    return [spike, rng.standard_t(2, size=4096).astype(np.float32), padded_block]


@pytest.mark.parametrize("method,value_bits", [("hadamard", 8), ("qsgd", 8), ("randk", 2), ("randk", 8), ("topk", 2),
                                               ("topk", 1)])
@pytest.mark.parametrize("bits", [4, 1, 0.1])
def test_the_contractive_mode_never_does_worse_than_sending_nothing(method, value_bits, bits):
    codec = compression.codec(method, value_bits, unbiased=False)
    for x in _hard_rows():
        budget = np.array([[max(int(bits * len(x) / 8), codec.min_bytes(len(x)))]])
        out = Writer()
        codec.encode([x[None]], budget, np.random.default_rng(0), np.random.default_rng(1), out)
        (got,) = codec.decode((len(x),), budget, np.random.default_rng(0), Reader(out.getvalue()))
        assert ((got[0] - x) ** 2).sum() < (x**2).sum(), (method, len(x))


def test_the_rotation_sends_some_of_every_chunk_at_low_budgets():
    bits, counts = hadamard.plan(16448, 40, True)  # chunks of 16384 and 64 values, 36 bytes of codes
    assert bits == 1 and all(counts) and sum(counts) == 8 * (40 - 2 * 4)


def test_a_non_finite_delta_is_an_error_not_a_silent_zero():
    uplink = _uplink("hadamard", 1)
    upload = _upload(0)
    upload.delta[1, 5] = np.nan
    with pytest.raises(OverflowError, match="not finite"):
        uplink.send(upload, uplink.init_client(), 0, 0)


def test_topk_keeps_exactly_the_k_largest():
    codec = compression.codec("topk", 32)
    x = _delta(4, rows=1)[:, :1500]
    budget = np.array([[300]])
    out = Writer()
    codec.encode([x], budget, np.random.default_rng(0), np.random.default_rng(1), out)
    (got,) = codec.decode((1500,), budget, np.random.default_rng(0), Reader(out.getvalue()))
    k = codec.k(1500, 300)
    kept = np.flatnonzero(got[0])
    assert len(kept) == k > 10
    assert set(kept) == set(np.argsort(-np.abs(x[0]))[:k])
    assert np.array_equal(got[0, kept], x[0, kept])  # 32-bit values arrive exactly


def test_lloyd_max_errors_match_the_known_values():
    assert quantize.gaussian_error(1) == pytest.approx(np.pi / 2 - 1, rel=1e-9)
    errors = [quantize.gaussian_error(b) for b in range(1, 9)]
    assert all(a > b > 0 for a, b in zip(errors, errors[1:]))
    assert errors[1] == pytest.approx(0.1175 / (1 - 0.1175), rel=1e-3)  # 2-bit Lloyd-Max distortion 0.1175


def test_hadamard_transform_is_its_own_inverse_up_to_scale():
    x = np.random.default_rng(0).normal(size=(3, 2**14)).astype(np.float32)
    for m in (64, 1024, 2**14):
        assert np.allclose(hadamard.fwht(hadamard.fwht(x[:, :m])) / m, x[:, :m], atol=1e-4)
    assert sum(hadamard.chunk_sizes(54106)) - 54106 < hadamard.ALIGN


# ---- the uplink channel -------------------------------------------------------------------------

def test_dense_uplink_is_the_identity_and_counts_float32_deltas_and_float64_weights():
    uplink = _uplink("none", 32)
    upload = _upload(0)
    data, _, _ = uplink.encode(upload, uplink.init_client(), 3, 5)
    decoded = uplink.send(upload, uplink.init_client(), 3, 5)
    assert decoded.nbytes == len(data) == 4 * LAYOUT.parameters + 8 * LAYOUT.rows
    assert np.array_equal(decoded.delta, upload.delta) and np.array_equal(decoded.weights, upload.weights)


@pytest.mark.parametrize("method", [m for m in COMPRESSION_METHODS if m != "none"])
@pytest.mark.parametrize("bits", [16, 4, 1, 0.25, 0.05, 0.02])
@pytest.mark.parametrize("select", [True, False])
def test_no_upload_exceeds_its_cap_and_the_count_is_the_real_length(method, bits, select):
    uplink = _uplink(method, bits, select)
    if uplink_header_bytes(LAYOUT, True) + uplink.plan.row_min > uplink.cap:  # not even one row fits: refused up front
        with pytest.raises(UserError, match="too small"):
            compression.build(_config(uplink_bits=bits, uplink=method), _Model())
        return
    state = uplink.init_client()
    for round_index in range(3):
        upload = _upload(round_index, weights=np.random.default_rng(round_index).dirichlet([0.4] * 4) * 100)
        data, _, _ = uplink.encode(upload, state, 1, round_index)
        decoded = uplink.send(upload, state, 1, round_index)
        assert decoded.nbytes == len(data) <= uplink.cap
        assert np.array_equal(uplink.receive(data, 1, round_index, 0).delta, decoded.delta)


def test_selection_skips_light_components_and_gives_heavy_ones_more_bytes():
    uplink = _uplink("hadamard", 0.5, select=True)
    upload = _upload(0, weights=(60.0, 30.0, 1.0, 9.0))  # component 2 holds 1% of this client's mass
    decoded = uplink.send(upload, uplink.init_client(), 0, 0)
    assert decoded.weights[2] == 0 and not decoded.delta[2].any()  # not sent, and not counted by the server
    errors = [((decoded.delta[k] - upload.delta[k]) ** 2).sum() / (upload.delta[k] ** 2).sum() for k in (0, 1, 3)]
    assert errors[0] < errors[1] < errors[2]  # more mass, more bits, less error
    plain = _uplink("hadamard", 0.5, select=False).send(upload, uplink.init_client(), 0, 0)
    assert plain.weights[2] == 1.0 and plain.delta[2].any()


def test_error_feedback_carries_exactly_what_was_not_sent():
    uplink = _uplink("topk", 0.5, value_bits=32, residual_dtype="float32")
    state = uplink.init_client()
    upload = _upload(0)
    first = uplink.send(upload, state, 2, 0)
    sent = first.weights > 0
    assert np.array_equal(state.residual[sent], upload.delta[sent] - first.delta[sent])
    assert not state.residual[~sent].any()
    residual = state.residual.copy()
    second_upload = _upload(1)
    second = uplink.send(second_upload, state, 2, 1)
    intended = second_upload.delta + residual
    sent = second.weights > 0
    assert np.array_equal(second.delta[sent] + state.residual[sent], intended[sent])


def test_half_precision_residuals_round_what_float32_would_keep():
    exact, compact = _uplink("topk", 0.5, residual_dtype="float32"), _uplink("topk", 0.5, residual_dtype="float16")
    states = exact.init_client(), compact.init_client()
    exact.send(_upload(0), states[0], 0, 0)
    compact.send(_upload(0), states[1], 0, 0)
    assert states[1].residual.dtype == np.float16 and states[1].residual.nbytes == states[0].residual.nbytes // 2
    assert np.array_equal(states[1].residual, states[0].residual.astype(np.float16))


# ---- the downlink channel -------------------------------------------------------------------------

def _downlink(method: str, bits: float, initial: np.ndarray, unbiased: bool = False) -> Downlink:
    cap = None if bits >= 32 else int(np.ceil(bits * LAYOUT.parameters / 8))
    return Downlink(compression.codec(method, 8, unbiased), LAYOUT, cap, seed=3, initial_model=initial)


def test_dense_downlink_carries_the_model_exactly():
    model = _delta(5)
    server, worker = _downlink("none", 32, np.zeros_like(model)), _downlink("none", 32, np.zeros_like(model))
    data = server.encode(Broadcast("train", 4, np.arange(3, dtype=np.float32), model=model))
    received = worker.decode("train", 4, data)
    assert np.array_equal(received.model, model) and np.array_equal(received.payload, np.arange(3))
    assert len(data) == 5 + 12 + 4 * LAYOUT.parameters


def _replica_errors(method: str, bits: float, unbiased: bool = False, rounds: int = 12) -> list[float]:
    """Relative distance of the clients' replica to a fixed server model, round after round."""
    initial = np.zeros((4, LAYOUT.row_size), dtype=np.float32)
    server, worker = _downlink(method, bits, initial, unbiased), _downlink(method, bits, initial, unbiased)
    target = _delta(6) * 50
    errors = []
    for round_index in range(rounds):
        data = server.encode(Broadcast("train", round_index, np.zeros(2, np.float32), model=target))
        assert len(data) <= server.cap
        for party in (server, worker):
            received = party.decode("train", round_index, data)
        assert np.array_equal(server.held, worker.held) and np.array_equal(received.model, worker.held)
        errors.append(float(((server.held - target) ** 2).sum() / (target**2).sum()))
    return errors


@pytest.mark.parametrize("method,bits,after_12_rounds", [
    ("hadamard", 1, 1e-3), ("hadamard", 0.1, 0.8), ("topk", 0.5, 0.3), ("qsgd", 2, 0.3), ("randk", 0.5, 0.7)])
def test_compressed_downlink_replicas_agree_and_catch_up_with_the_server(method, bits, after_12_rounds):
    errors = _replica_errors(method, bits)
    # what one round does not carry is still in the next round's difference (server-side error
    # feedback), and in the contractive mode that difference shrinks every round, faster with more bits
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < after_12_rounds * errors[0]


def test_feeding_back_an_unbiased_high_variance_error_diverges():
    # Why the downlink and error feedback use the contractive mode: 1-bit stochastic rounding is
    # unbiased but its error exceeds the signal, so the replica moves away from the server's model.
    errors = _replica_errors("qsgd", 2, unbiased=True, rounds=4)
    assert errors[-1] > errors[0] > 1


def test_an_evaluation_broadcast_does_not_move_what_clients_train_from():
    initial = np.zeros((4, LAYOUT.row_size), dtype=np.float32)
    party = _downlink("hadamard", 1, initial)
    data = party.encode(Broadcast("evaluate", 9, np.zeros(1, np.float32), model=_delta(7), evaluation_only=True))
    received = party.decode("evaluate", 9, data)
    assert received.evaluation_only and received.model.any() and not party.held.any()


# ---- building the channels from a config -------------------------------------------------------

class _Model:
    def model_layout(self):
        return LAYOUT

    def initial_model(self):
        return np.zeros((LAYOUT.rows, LAYOUT.row_size), dtype=np.float32)


def _config(**compression_values) -> Config:
    config = Config()
    for key, value in compression_values.items():
        setattr(config.compression, key, value)
    return config


def test_auto_picks_what_fits_and_says_so():
    dense = compression.build(_config(), _Model())
    assert dense.uplink.cap is None and dense.attributes["uplink_method"] == "none"
    assert dense.attributes["uplink_cap_bytes"] == -1 and dense.attributes["model_parameters"] == LAYOUT.parameters
    half = compression.build(_config(uplink_bits=16.5, downlink_bits=16), _Model())
    assert half.attributes["uplink_method"] == "fp16"  # the whole model fits in 16 bits + the weights
    assert half.attributes["downlink_method"] == "hadamard"  # 16 bits leave no room for the control values
    low = compression.build(_config(uplink_bits=0.25, downlink_bits=1), _Model())
    assert low.attributes["uplink_cap_bytes"] == int(np.ceil(0.25 * LAYOUT.parameters / 8))
    assert "rotated coordinates" in low.attributes["uplink_method_detail"]


@pytest.mark.parametrize("values,fragment", [
    ({"uplink_bits": 0.001}, "the smallest budget that works is"),
    ({"downlink_bits": 0.01}, "the smallest budget that works is"),
    ({"uplink_bits": 8, "uplink": "fp16"}, "the smallest budget that works is 16"),
    ({"uplink_bits": 8, "uplink": "none"}, "needs uplink_bits=32"),
])
def test_an_impossible_budget_is_refused_with_the_smallest_that_works(values, fragment):
    with pytest.raises(UserError, match=fragment) as caught:
        compression.build(_config(**values), _Model())
    message = str(caught.value)
    assert "\n" not in message
    if "smallest" in message:  # and that budget does work
        smallest = float(message.rsplit(" ", 1)[1])
        key = next(k for k in values if k.endswith("_bits"))
        compression.build(_config(**{**values, key: smallest}), _Model())


# ---- the log refuses a broken budget ----------------------------------------------------------

def test_the_log_refuses_a_round_over_its_cap(tmp_path):
    from fedgmi_mpi.logs.hdf5 import CapExceeded, RunLog

    log = RunLog.create(tmp_path / "run.h5", False, {}, seen=np.ones(3, bool), num_train=np.ones(3), num_test=np.ones(3),
                        truth={}, client_specs={"train": {}}, server_specs={}, summary_specs={})
    within = dict(client_metrics={}, server_metrics={}, summary=None, downlink_cap=100, uplink_cap=50)
    log.write_round("train", 0, 0.1, np.full(3, 100), np.array([50, 0, 49]), **within)
    with pytest.raises(CapExceeded, match="client 2 moved 51 bytes up, over the cap of 50"):
        log.write_round("train", 1, 0.1, np.full(3, 100), np.array([50, 0, 51]), **within)
    with pytest.raises(CapExceeded, match="down"):
        log.write_round("train", 1, 0.1, np.array([100, 101, 100]), np.zeros(3), **within)
    assert log.file["rounds/bytes_up"].shape[0] == 1  # nothing of the refused rounds was written
    assert log.file["rounds/uplink_cap"][0] == 50
    log.close()
