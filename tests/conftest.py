"""Shared fixtures. Use them with ``pytestmark = pytest.mark.usefixtures(...)``."""

from __future__ import annotations

import pytest
import torch
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps a Message with the sending task's identity, which a running
    ServerApp process has set; tests that build Messages set it by hand."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster and avoids stalls on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fedsim_cache(tmp_path_factory):
    """One FEDSIM_CACHE for the whole session, never ~/.cache: each evaluator is built
    once (about 20 s for digits, 1.5 min for MNIST-5k on 2 cores) and shared; builds are
    seeded, so sharing changes no result."""
    return tmp_path_factory.mktemp("fedsim-cache")
