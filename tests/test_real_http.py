"""The HTTP API (``serve --http-listen``) of a real ``p2pnode serve`` process,
over loopback HTTP with httpx: auth on every route, the cookie login, the
JSON endpoints answering exactly what the control socket answers, errors and
their statuses, SSE (logs follow, live events), the body cap, the token file
and ``p2pnode http-token``.  Stream tasks ending with their client or node:
tests/test_web_inprocess.py (it looks inside the node)."""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2pnode.control import ControlError
from tests.httpapi import ROUTES, sse_events, unguarded_routes
from tests.realnet import PYTHON, Cluster, ServeNode, cluster, run_cli
from tests.test_cli_client import PROBE

pytestmark = pytest.mark.slow

FREE = "/ip4/127.0.0.1/tcp/0"
WAIT = 60.0  # bound of every wait: a guard against hangs, not a performance claim


def _sim(name: str, duration: str = "100ms") -> dict[str, Any]:
    engine = {"type": "sim", "duration": duration}
    return {"name": name, "task": {"engine": engine, "timeout": "30m", "retry": {"attempts": 1}}}


def _process(name: str, script: str) -> dict[str, Any]:
    engine = {"type": "process", "command": ["sh", "-c", script]}
    resources = {"cpu": 0.1, "memory": "64MiB"}
    return {"name": name, "task": {"engine": engine, "resources": resources, "timeout": "2m"}}


class Served:
    """One serve process with its HTTP API, and clients for it."""

    def __init__(self, c: Cluster, node: ServeNode) -> None:
        self.c, self.node = c, node
        self.url = str(node.control("ping")["http"])
        self.token = (node.data_dir / "http-token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=WAIT
        )
        self.anonymous = httpx.Client(base_url=self.url, timeout=WAIT)

    def settled(self, job_id: str) -> dict[str, Any]:
        return self.c.wait_job(
            self.node,
            job_id,
            lambda v: v["state"] in ("completed", "failed", "stopped"),
            timeout=WAIT,
            what="end",
        )

    def same_as_control(self, path: str, op: str, **args: Any) -> Any:
        """GET ``path``; its body must be the control answer, byte for byte."""
        answer = self.http.get(path)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        expected = json.dumps(self.node.control(op, **args), default=str)
        assert answer.text == expected, (path, answer.text[:300], expected[:300])
        return answer.json()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with cluster(tmp_path_factory.mktemp("http")) as c:
        node = c.add(
            "a",
            executors="sim,process",
            extra=["--sandbox", "none", "--http-listen", "127.0.0.1:0"],
        )
        node.wait_ready()
        s = Served(c, node)
        yield s
        s.http.close()
        s.anonymous.close()


# --- auth ------------------------------------------------------------------------------


def test_every_route_refuses_a_request_without_the_right_token(served: Served) -> None:
    client = served.anonymous
    assert unguarded_routes(client) == []
    assert unguarded_routes(client, headers={"authorization": "Bearer wrong"}) == []
    wrong = "x" * len(served.token)
    assert unguarded_routes(client, headers={"authorization": f"Bearer {wrong}"}) == []
    # The token in another scheme, or the wrong cookie, is no token.
    assert unguarded_routes(client, headers={"authorization": f"Basic {served.token}"}) == []
    assert unguarded_routes(client, cookies={"p2pnode_token": wrong}) == []
    # With the token no route says 401.
    for method, path in ROUTES:
        with served.http.stream(method, path, content=b"{}" if method == "POST" else None) as r:
            assert r.status_code != 401, (method, path)
    assert served.node.running


def test_cookie_login_sets_an_httponly_cookie_and_clears_the_address_bar(served: Served) -> None:
    client = served.anonymous
    refused = client.get("/", params={"token": "wrong"})
    assert refused.status_code == 401 and "http-token --url" in refused.text
    assert "set-cookie" not in refused.headers
    login = client.get("/", params={"token": served.token})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"p2pnode_token={served.token};")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    with httpx.Client(base_url=served.url, cookies={"p2pnode_token": served.token}) as browser:
        page = browser.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert browser.get("/static/index.html").text == page.text
        assert browser.get("/api/v1/nodes").json()[0]["node_id"] == served.node.node_id


def test_token_file_is_private_and_http_token_prints_it(served: Served) -> None:
    path = served.node.data_dir / "http-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(served.token) >= 43
    plain = served.node.cli("http-token")
    assert plain.returncode == 0 and plain.stdout == served.token + "\n", plain.explain()
    url = served.node.cli("http-token", "--url")
    assert url.stdout.strip() == f"{served.url}/?token={served.token}", url.explain()
    assert served.node.cli("-o", "json", "http-token").json() == {
        "token": served.token,
        "url": f"{served.url}/?token={served.token}",
    }
    assert served.url.startswith("http://127.0.0.1:")
    assert f"http: {served.url}/" in served.node.stderr_path.read_text()


def test_a_rotated_token_replaces_the_old_one_on_the_running_node(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add("r", executors="sim", extra=["--http-listen", "127.0.0.1:0"])
        node.wait_ready()
        served = Served(c, node)
        old_token = served.token
        login = served.anonymous.get(f"/?token={old_token}", follow_redirects=False)
        cookie = {"p2pnode_token": login.cookies["p2pnode_token"]}
        assert served.anonymous.get("/api/v1/nodes", cookies=cookie).status_code == 200
        rotated = node.cli("-o", "json", "http-token", "--rotate")
        assert rotated.returncode == 0, rotated.explain()
        new_token = rotated.json()["token"]
        assert new_token != old_token
        assert rotated.json()["url"] == f"{served.url}/?token={new_token}"
        path = node.data_dir / "http-token"
        assert path.read_text().strip() == new_token
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # The running node refuses the old token and its cookie at once, and
        # takes the new one without a restart.
        assert served.http.get("/api/v1/nodes").status_code == 401
        assert served.anonymous.get("/api/v1/nodes", cookies=cookie).status_code == 401
        fresh = {"authorization": f"Bearer {new_token}"}
        assert served.anonymous.get("/api/v1/nodes", headers=fresh).status_code == 200
        assert node.cli("http-token").stdout.strip() == new_token  # plain reads do not rotate
        # A token file that may no longer be used (gone, or leaked) refuses everything.
        os.chmod(path, 0o644)
        assert served.anonymous.get("/api/v1/nodes", headers=fresh).status_code == 401
        path.unlink()
        assert served.anonymous.get("/api/v1/nodes", headers=fresh).status_code == 401
        again = node.cli("http-token").stdout.strip()  # made anew: taken at once
        assert again != new_token
        ok = served.anonymous.get("/api/v1/nodes", headers={"authorization": f"Bearer {again}"})
        assert ok.status_code == 200
        assert node.running
        served.http.close()
        served.anonymous.close()


def test_http_token_is_quick_and_made_once_without_a_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    first = run_cli("--data-dir", data_dir, "http-token")
    assert first.returncode == 0, first.explain()
    assert run_cli("--data-dir", data_dir, "http-token").stdout == first.stdout  # never rotated
    assert stat.S_IMODE((data_dir / "http-token").stat().st_mode) == 0o600
    assert run_cli("--data-dir", data_dir, "-o", "json", "http-token").json() == {
        "token": first.stdout.strip(),
        "url": None,
    }
    no_node = run_cli("--data-dir", data_dir, "http-token", "--url")
    assert no_node.returncode == 3 and "no login address" in no_node.stderr, no_node.explain()
    # A token file others may read is refused, not silently fixed.
    os.chmod(data_dir / "http-token", 0o644)
    leaked = run_cli("--data-dir", data_dir, "http-token")
    assert leaked.returncode == 2 and "readable or writable by others" in leaked.stderr
    assert leaked.stdout == ""
    # The quick path: neither trio, libp2p nor the web server is imported.
    heavy = ("trio", "libp2p", "starlette", "hypercorn", "p2pnode.node", "p2pnode.cli.serve")
    os.chmod(data_dir / "http-token", 0o600)
    code = "import json\n" + PROBE.format(plant="", heavy=heavy)
    done = subprocess.run(
        [PYTHON, "-c", code, "--data-dir", str(data_dir), "http-token"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}


# --- the JSON endpoints ------------------------------------------------------------------


def test_submit_then_read_it_back_as_the_client_verbs_answer(served: Served) -> None:
    http = served.http
    made = http.post("/api/v1/jobs", json=_sim("http-one"))
    assert made.status_code == 201, made.text
    job_id = made.json()["job_id"]
    # The same Idempotency-Key: the same job, created once.
    keyed = [
        http.post("/api/v1/jobs", json=_sim("keyed"), headers={"idempotency-key": "k1"})
        for _ in range(2)
    ]
    assert [r.status_code for r in keyed] == [201, 201]
    assert keyed[0].json() == keyed[1].json()
    # YAML text is a spec too.
    yaml_spec = "name: http-yaml\ntask:\n  engine: {type: sim, duration: 50ms}\n"
    as_yaml = http.post(
        "/api/v1/jobs", content=yaml_spec, headers={"content-type": "application/yaml"}
    )
    assert as_yaml.status_code == 201, as_yaml.text
    for job in (job_id, keyed[0].json()["job_id"], as_yaml.json()["job_id"]):
        assert served.settled(job)["state"] == "completed"

    view = served.same_as_control(f"/api/v1/jobs/{job_id}", "describe", job_id=job_id)
    assert view["name"] == "http-one"
    served.same_as_control(f"/api/v1/jobs/{job_id}/history", "history", job_id=job_id)
    listed = served.same_as_control("/api/v1/jobs?name=http-", "jobs", name="http-")
    assert [j["name"] for j in listed] == ["http-one", "http-yaml"]
    served.same_as_control(
        "/api/v1/jobs?state=completed&state=failed&limit=2",
        "jobs",
        state=["completed", "failed"],
        limit=2,
    )
    since = http.get("/api/v1/jobs", params={"since": "2000-01-01T00:00:00Z", "type": "batch"})
    assert {j["job_id"] for j in since.json()} >= {job_id}
    served.same_as_control("/api/v1/nodes", "peers")
    logs = http.get(f"/api/v1/jobs/{job_id}/logs", params={"tail": 5})
    assert logs.status_code == 200 and logs.json() == {
        "job_id": job_id,
        "state": "completed",
        "chunks": [],
    }
    stats = http.get("/api/v1/stats").json()
    assert stats["node_id"] == served.node.node_id and "sent_by_type" in stats
    health = http.get("/healthz").json()
    assert health == {"ok": True, "node_id": served.node.node_id, "version": health["version"]}


def test_an_invalid_spec_is_a_400_listing_every_error(served: Served) -> None:
    bad = {"name": "bad", "task": {"engine": {"type": "sim", "duration": "zz"}}, "bogus": 1}
    answer = served.http.post("/api/v1/jobs", json=bad)
    assert answer.status_code == 400
    body = answer.json()
    with pytest.raises(ControlError) as control:
        served.node.control("submit", spec=bad)
    assert body["code"] == "invalid_spec" == control.value.code
    assert [e["path"] for e in body["errors"]] == ["task.engine.duration", "bogus"]
    # Not JSON, not an object, bad query values: bad_request, one clear line.
    for content, says in (
        (b"{nope", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "the body must be the job spec"),
    ):
        refused = served.http.post("/api/v1/jobs", content=content)
        assert refused.status_code == 400 and refused.json()["code"] == "bad_request", content
        assert says in refused.json()["error"], refused.text
    for query in ("limit=abc", "limit=0", "runs=maybe", "since=yesterday"):
        refused = served.http.get(f"/api/v1/jobs?{query}")
        assert refused.status_code == 400 and refused.json()["code"] == "bad_request", query
    assert served.http.get("/no/such/path").status_code == 404
    assert served.http.delete("/api/v1/jobs").status_code == 405


def test_prefixes_name_jobs_and_an_ambiguous_one_is_a_409(served: Served) -> None:
    ids = [served.http.post("/api/v1/jobs", json=_sim(f"p{i}")).json()["job_id"] for i in range(2)]
    for job_id in ids:
        served.settled(job_id)
    # The shortest prefixes that name one job each (of every job on the node).
    every = [j["job_id"] for j in served.node.control("jobs", runs=True)]
    for job_id in ids:
        others = [i for i in every if i != job_id]
        n = next(
            n for n in range(3, len(job_id)) if not any(o.startswith(job_id[:n]) for o in others)
        )
        got = served.http.get(f"/api/v1/jobs/{job_id[:n]}")
        assert got.status_code == 200 and got.json()["job_id"] == job_id
    both = served.http.get("/api/v1/jobs/j-")
    assert both.status_code == 409
    body = both.json()
    assert body["code"] == "ambiguous" and set(ids) <= set(body["candidates"])
    missing = served.http.get("/api/v1/jobs/j-ffffffffffffffff/history")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert "Traceback" not in missing.text


def test_stop_a_running_job(served: Served) -> None:
    job_id = served.http.post("/api/v1/jobs", json=_sim("long", "10m")).json()["job_id"]
    served.c.wait_job(
        served.node, job_id, lambda v: v["state"] == "running", timeout=WAIT, what="running"
    )
    stopped = served.http.post(f"/api/v1/jobs/{job_id[:10]}/stop", json={"reason": "enough"})
    assert stopped.status_code == 200 and stopped.json()["job_id"] == job_id
    view = served.settled(job_id)
    assert view["state"] == "stopped" and "enough" in view["reason"]
    again = served.http.post(f"/api/v1/jobs/{job_id}/stop", json={"reason": 7})
    assert again.status_code == 400 and again.json()["code"] == "bad_request"


# --- Server-Sent Events ----------------------------------------------------------------


def _lines_of(response: httpx.Response) -> queue.Queue[str | None]:
    """The stream's lines, read by a thread (None at its end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        try:
            for line in response.iter_lines():
                lines.put(line)
        except httpx.HTTPError:
            pass
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _drain(lines: queue.Queue[str | None]) -> Iterator[str]:
    deadline = time.monotonic() + WAIT
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line is None:
            return
        yield line


def test_following_a_jobs_logs_streams_them_and_ends_with_end(served: Served) -> None:
    script = "echo first; sleep 1; echo second; echo oops >&2"
    job_id = served.http.post("/api/v1/jobs", json=_process("chatty", script)).json()["job_id"]
    with served.http.stream("GET", f"/api/v1/jobs/{job_id}/logs?follow=true") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(_drain(_lines_of(answer))))
    named = [(name, data) for name, data in events if name]
    assert named[-1] == ("end", json.dumps({"job_id": job_id, "state": "completed"}))
    chunks = [json.loads(data) for name, data in named if name == "log"]
    out = "".join(c["data"] for c in chunks if c["stream"] == "stdout")
    assert out == "first\nsecond\n"
    assert "".join(c["data"] for c in chunks if c["stream"] == "stderr") == "oops\n"
    assert {c["kind"] for c in chunks} == {"log"}
    # Accept: text/event-stream asks for the same stream; following a job no
    # node owns is a plain 404 before the stream starts (as job logs -f says).
    accepted = served.http.get(
        f"/api/v1/jobs/{job_id}/logs", headers={"accept": "text/event-stream"}
    )
    assert list(sse_events(iter(accepted.text.splitlines())))[-1][0] == "end"
    unknown = served.http.get("/api/v1/jobs/j-ffffffffffffffff/logs?follow=true")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    assert unknown.headers["content-type"] == "application/json"


def test_events_push_a_job_change_without_polling(served: Served) -> None:
    with served.http.stream("GET", "/api/v1/events") as answer:
        assert answer.status_code == 200
        events = sse_events(_drain(_lines_of(answer)))
        name, data = next(events)
        assert name == "snapshot"
        snapshot = json.loads(data)
        assert snapshot["nodes"][0]["node_id"] == served.node.node_id
        assert isinstance(snapshot["jobs"], list)
        # Submitted through the control socket: the stream tells, unasked.
        job_id = served.node.control("submit", spec=_sim("pushed", "300ms"))["job_id"]
        states = []
        for name, data in events:
            if name == "job" and json.loads(data)["job_id"] == job_id:
                states.append(json.loads(data)["state"])
                if states[-1] == "completed":
                    break
        assert states[-1] == "completed"
        # Each job event is the summary the listing shows.
        listed = served.node.control("jobs", name="pushed")
        assert json.loads(data) == listed[0]


def test_a_body_over_one_mib_is_refused_and_the_node_goes_on(served: Served) -> None:
    big = b"x" * (1024 * 1024 + 1)
    too_big = served.http.post("/api/v1/jobs", content=big)
    assert too_big.status_code == 413 and too_big.json()["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"y" * 65536

    chunked = served.http.post("/api/v1/jobs", content=chunks())
    assert chunked.status_code == 413 and chunked.json()["code"] == "too_large"
    assert served.http.get("/healthz").json()["ok"] is True
    assert served.node.running


# --- serving ---------------------------------------------------------------------------


def test_http_listen_from_the_config_file_and_sigterm_ends_open_streams(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('http-listen = "127.0.0.1:0"\n')
    with cluster(tmp_path) as c:
        node = c.add("a", executors="sim", extra=["--config", str(config)])
        node.wait_ready()
        s = Served(c, node)
        with s.http.stream("GET", "/api/v1/events") as answer:
            lines = _lines_of(answer)
            assert next(sse_events(_drain(lines)))[0] == "snapshot"
            assert node.terminate() == 0  # the open stream does not hold the node up
            list(_drain(lines))  # and it ends (else queue.Empty after WAIT)
        assert not node.control_socket.exists()


def test_http_listen_from_the_environment_and_bad_addresses(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.nodes["env"] = ServeNode("env", tmp_path / "env", c.log_dir, ["--listen", FREE])
        node.start(env={"P2PNODE_HTTP_LISTEN": "127.0.0.1:0"})
        node.wait_ready()
        assert str(node.control("ping")["http"]).startswith("http://127.0.0.1:")
        other = c.add("plain", executors="")
        other.wait_ready()
        assert other.control("ping")["http"] is None
    bad = run_cli("serve", "--data-dir", tmp_path / "b", "--http-listen", "localhost")
    assert bad.returncode == 2 and "bad --http-listen address 'localhost'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(
            "serve",
            "--data-dir",
            tmp_path / "c",
            "--listen",
            FREE,
            "--http-listen",
            f"127.0.0.1:{port}",
        )
    assert busy.returncode == 1, busy.explain()
    assert f"cannot start the node: cannot serve HTTP on 127.0.0.1:{port}" in busy.stderr
    # A token file others may read stops the start: it may have leaked.
    leaky = tmp_path / "d"
    leaky.mkdir(mode=0o700)
    (leaky / "http-token").write_text("t" * 43 + "\n")
    os.chmod(leaky / "http-token", 0o644)
    refused = run_cli(
        "serve", "--data-dir", leaky, "--listen", FREE, "--http-listen", "127.0.0.1:0"
    )
    assert refused.returncode == 1, refused.explain()
    assert "cannot start the node:" in refused.stderr
    assert "readable or writable by others" in refused.stderr


def test_a_filtered_event_stream_says_when_a_job_leaves_the_filter(served: Served) -> None:
    with served.http.stream("GET", "/api/v1/events?state=running") as answer:
        assert answer.status_code == 200
        events = sse_events(_drain(_lines_of(answer)))
        assert next(events)[0] == "snapshot"
        job_id = served.node.control("submit", spec=_sim("leaver", "500ms"))["job_id"]
        seen = []
        for name, data in events:
            body = json.loads(data) if name in ("job", "left") else {}
            if body.get("job_id") == job_id:
                seen.append((name, body.get("state")))
                if name == "left":
                    break
        # Shown while running, then said to have left once it completed (it is
        # no longer a running job), never shown in a state outside the filter.
        assert seen[0] == ("job", "running") and seen[-1] == ("left", None), seen
        assert all(state == "running" for name, state in seen if name == "job"), seen
