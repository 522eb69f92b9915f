"""Monitoring end to end: a real Prometheus (Debian's package) scrapes the running services and
the `cai label` job; the dashboard's own label-throughput query returns a positive figure. And
every metric the dashboard and alert rules use is exported by a running service."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tests.conftest import REPO, ServerProcess
from tests.ports import free_port

DASHBOARD = REPO / "k8s" / "monitoring" / "grafana-dashboard.json"


def first_panel_queries() -> list[str]:
    """As Grafana sends them: every namespace (the test's targets have none), a 1m rate interval."""
    panel = json.loads(DASHBOARD.read_text())["panels"][0]
    return [t["expr"].replace("$namespace", ".*").replace("$__rate_interval", "1m") for t in panel["targets"]]


class Prometheus:
    def __init__(self, targets: list[str], workdir):
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: scripts/test installs Debian's package"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: cai\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, (workdir / "prometheus.log").read_text()[-2000:]
            time.sleep(0.3)

    def query(self, expr: str) -> float | None:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def test_dashboard_label_throughput_from_a_real_prometheus(generation_server, judge_server, tmp_path):
    label_metrics = free_port()
    prometheus = Prometheus(
        [
            f"127.0.0.1:{generation_server.metrics_port}",
            f"127.0.0.1:{judge_server.metrics_port}",
            f"127.0.0.1:{label_metrics}",
        ],
        tmp_path,
    )
    try:
        # the job starts once Prometheus has scraped the judge, so the counter's rise is seen
        deadline = time.time() + 60
        while prometheus.query(f'up{{instance="127.0.0.1:{judge_server.metrics_port}"}}') != 1.0:
            assert time.time() < deadline, "Prometheus never scraped the judge"
            time.sleep(0.5)
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "label",
                "--queue",
                f"sqlite:///{tmp_path / 'q.db'}",
                "--generation",
                generation_server.address,
                "--judge",
                judge_server.address,
                "--limit",
                "60",
                "--batch-size",
                "2",
                "--max-tokens",
                "6",
                "--metrics-port",
                str(label_metrics),
                "--no-progress",
            ],
            cwd=REPO,
            stdout=open(tmp_path / "label.log", "w"),
            stderr=subprocess.STDOUT,
        )
        queries = first_panel_queries()
        label_rate = 0.0  # the highest figure the dashboard's first query showed while the job ran
        deadline = time.time() + 600
        while time.time() < deadline and job.poll() is None:
            label_rate = max(label_rate, prometheus.query(queries[0]) or 0.0)
            time.sleep(1)
        if not label_rate:  # a short job: the last minute's rate is still there
            label_rate = prometheus.query(queries[0]) or 0.0
        job.wait(timeout=60)
        assert job.returncode == 0, (tmp_path / "label.log").read_text()[-3000:]
        assert label_rate > 0, f"{queries[0]} gave {label_rate}"
        tokens = prometheus.query("sum(rate(cai_generation_tokens_total[1m]))")
        assert tokens and tokens > 0
    finally:
        prometheus.stop()


def exported_names(port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
    return names


def test_every_metric_the_dashboard_and_rules_use_is_exported(
    generation_server, critique_server, judge_server, tmp_path
):
    from services.models.tiny import build_tiny_model
    from tests.k8s.test_manifests import EXPORTED_METRICS

    rm = build_tiny_model(tmp_path / "rm", reward=True)
    names = set()
    for server in (generation_server, critique_server, judge_server):
        names |= exported_names(server.metrics_port)
    (tmp_path / "reward").mkdir()
    reward = ServerProcess(["serve", "reward", "--model", str(rm)], tmp_path / "reward")
    (tmp_path / "trainer").mkdir()
    trainer = ServerProcess(
        [
            "serve",
            "trainer",
            "--queue",
            f"sqlite:///{tmp_path / 'q.db'}",
            "--work-dir",
            str(tmp_path / "work"),
            "--model",
            str(rm),
        ],
        tmp_path / "trainer",
    )
    try:
        names |= exported_names(reward.metrics_port) | exported_names(trainer.metrics_port)
    finally:
        reward.stop()
        trainer.stop()
    missing = sorted(EXPORTED_METRICS - names)
    assert not missing, f"used by the dashboard or rules but exported by no service: {missing}"
