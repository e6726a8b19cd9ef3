"""medge.edge.node_extra: medge check's answer to "does the node extra work here?"."""
import builtins
import re

import pytest

from medge.edge.node_extra import check_node_extra


def test_without_the_extra_it_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_node_extra(name, *args, **kwargs):
        if name.split(".")[0] in ("pynetdicom", "highdicom", "pydicom"):
            raise ImportError(f"No module named {name!r}", name=name.split(".")[0])
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_node_extra)
    r = check_node_extra()
    assert set(r) == {"ok", "error"} and r["ok"] is False
    assert re.fullmatch(r"(pynetdicom|highdicom|pydicom) is not installed \(pip install 'medge\[node\]'\)", r["error"])


def test_with_the_extra_a_c_echo_to_itself_succeeds():
    pytest.importorskip("pynetdicom", reason="the node extra is not installed")
    pytest.importorskip("highdicom", reason="the node extra is not installed")
    r = check_node_extra()
    assert r["ok"] is True and r["error"] is None, r
    assert set(r["versions"]) == {"pynetdicom", "highdicom", "pydicom"}
    assert 0 < r["transfer_syntaxes"]["decodable"] <= r["transfer_syntaxes"]["known"]
