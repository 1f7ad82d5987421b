"""fedsim/records/wire.py: exact sizes and faithful conversions, checked against Flower/protobuf."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedsim.models.networks import build_model
from fedsim.records.wire import array_view, payload_bytes, to_array_record, to_state_dict

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
