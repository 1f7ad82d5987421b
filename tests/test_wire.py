"""fedsim/records/wire.py: exact sizes and faithful conversions, checked against Flower/protobuf."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedsim.models.networks import build_model
from fedsim.records.wire import (_npy_array, array_view, load_record, numpy_array, payload_bytes,
                                 to_array_record, to_state_dict)

ARRAYS = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "scalar": np.array(3.5, dtype=np.float64),
    "ints": np.arange(5, dtype=np.int64),
    "half": np.ones((4, 1, 2), dtype=np.float16),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "big": np.random.default_rng(0).standard_normal(40_000).astype(np.float32),  # 2-3 byte varints
}


def test_array_view_equals_numpy() -> None:
    for name, arr in ARRAYS.items():
        a = Array(arr)
        assert np.array_equal(array_view(a), a.numpy()), name
        assert array_view(a).dtype == arr.dtype and array_view(a).shape == arr.shape


def test_array_view_fortran_order_falls_back() -> None:
    arr = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    buf = io.BytesIO()
    np.save(buf, arr)
    a = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=buf.getvalue())
    assert np.array_equal(array_view(a), arr)


def test_to_array_record_same_bytes_as_flower() -> None:
    sd = {k: v.detach() for k, v in build_model("ddpm-small", (1, 8, 8), 10).state_dict().items()}
    ours, flowers = to_array_record(sd), ArrayRecord(sd)
    assert list(ours.keys()) == list(flowers.keys())
    for k in sd:
        assert ours[k].data == flowers[k].data and ours[k].shape == flowers[k].shape
    back = to_state_dict(ours)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    back["conv_in.weight"] += 1  # writable, independent of the record
    assert torch.equal(to_state_dict(ours)["conv_in.weight"], sd["conv_in.weight"])


def test_fast_array_is_flowers_array() -> None:
    """_npy_array skips Array.__init__: the object must be the one Flower's constructor builds."""
    for name, arr in ARRAYS.items():
        ours, flowers = numpy_array(arr), Array(arr)
        assert vars(ours) == vars(flowers), name
        assert ours == flowers and ours.object_id == flowers.object_id, name
        assert np.array_equal(ours.numpy(), arr)
    a = _npy_array("float32", (1,), b"1234")
    assert a.is_dirty and vars(a) == vars(Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b"1234"))


def _models():
    """Two ddpm-small models with different weights (build_model initialises from a fixed seed)."""
    src, dst = build_model("ddpm-small", (1, 8, 8), 10), build_model("ddpm-small", (1, 8, 8), 10)
    with torch.no_grad():
        for p in dst.parameters():
            p.add_(1.0)
    return src, dst


def test_load_record_equals_load_state_dict() -> None:
    src, dst = _models()
    params = [id(p) for p in dst.parameters()]
    load_record(dst, to_array_record(src.state_dict()))
    assert [id(p) for p in dst.parameters()] == params  # in place, like load_state_dict
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    # a float64 record: the fallback casts, as load_state_dict does
    src, dst = _models()
    load_record(dst, to_array_record({k: v.double() for k, v in src.state_dict().items()}))
    assert all(b.dtype == torch.float32 and torch.equal(a, b)
               for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_load_record_mismatch_raises_like_load_state_dict(change: str) -> None:
    src, dst = _models()
    sd = dict(src.state_dict())
    if change == "missing":
        sd.pop("conv_out.bias")
    elif change == "extra":
        sd["unexpected"] = torch.zeros(1)
    else:
        sd["conv_out.bias"] = torch.zeros(sd["conv_out.bias"].numel() + 1)
    with pytest.raises(RuntimeError) as theirs:
        _models()[1].load_state_dict(sd)
    with pytest.raises(RuntimeError) as ours:
        load_record(dst, to_array_record(sd))
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("content", [
    RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in ARRAYS.items()})}),
    RecordDict({"arrays": ArrayRecord({"": Array(ARRAYS["w"])}),
                "metrics": MetricRecord({"num-examples": 3, "train-loss": 0.25, "hist": [1, 2, 3]}),
                "meta": ConfigRecord({"partition-id": 7, "payload": "weights", "flag": True})}),
    RecordDict({"a": ArrayRecord(), "m": MetricRecord(), "c": ConfigRecord()}),
    RecordDict({"x" * 200: ArrayRecord({"y" * 300: Array(ARRAYS["big"])})}),
])
def test_payload_bytes_equals_protobuf(content: RecordDict) -> None:
    assert payload_bytes(content) == recorddict_to_proto(content).ByteSize()


def test_payload_bytes_for_a_unet_reply() -> None:
    sd = build_model("ddpm-small", (1, 8, 8), 10).state_dict()
    content = RecordDict({"arrays": to_array_record(sd), "metrics": MetricRecord({"num-examples": 9})})
    assert payload_bytes(content) == recorddict_to_proto(content).ByteSize()
