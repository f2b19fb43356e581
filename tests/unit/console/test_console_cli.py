"""``fwrescue console`` refuses bad arguments with a clear error before starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwrescue.cli import main


@pytest.mark.parametrize(("extra", "message"), [
    ([], "needs --repo"),
    (["--repo", "r", "--trust", "t", "--listen", "nowhere"], "--listen must be HOST:PORT"),
    (["--repo", "r", "--trust", "t", "--agent", "ftp://x,u,p"], "URL,USER,PASSWORD"),
    (["--repo", "r", "--trust", "t", "--agent", "http://127.0.0.1:1,u"], "URL,USER,PASSWORD"),
    (["--repo", "r", "--trust", "t", "--keep-operations", "0"], "--keep-operations"),
    (["--repo", "r", "--trust", "t", "--discover", "10.0.0.1:1900"], "MULTICAST"),
    (["--repo", "r", "--trust", "t", "--discover", "239.255.255.250:1900"],
     "--discover-network"),
])
def test_bad_arguments_are_refused(extra: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["console", "--state", str(tmp_path / "state"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # nothing was created


def test_status_without_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["console", "status", "--state", str(tmp_path), "--json"]) == 2
    assert "no console database" in capsys.readouterr().err
