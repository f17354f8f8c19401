"""Prometheus configuration and alerts (promtool), metric names against the code, the Grafana dashboard."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.deploy_files import (
    API_PORT,
    CONTRACT_METRICS,
    DASHBOARD,
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    PROMETHEUS_DIR,
    WORKER_METRICS_PORT,
    alert_rules,
    code_metric_names,
    compose,
    dashboard_panels,
    dashboard_queries,
    load_dashboard,
    load_yaml,
    promtool,
    run_tool,
    service,
    used_metric_names,
)

# ----------------------------------------------------------------------------------------------- Prometheus


def test_prometheus_config_passes_promtool() -> None:
    result = run_tool([promtool(), "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: prometheus.yml is valid" in result.stdout + result.stderr


def test_alert_rules_pass_promtool() -> None:
    result = run_tool([promtool(), "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run_tool([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_cover_backlog_errors_workers_and_latency() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert {"MasenetQueueBacklog", "MasenetHighErrorRate", "MasenetNoLiveWorkers", "MasenetHighLatencyP95"} <= set(
        rules
    )
    assert "masenet_queue_depth" in rules["MasenetQueueBacklog"]["expr"]
    assert 'status=~"5.."' in rules["MasenetHighErrorRate"]["expr"]
    no_workers = rules["MasenetNoLiveWorkers"]["expr"]
    assert "absent(masenet_worker_up)" in no_workers and "sum(masenet_worker_up) == 0" in no_workers
    assert "histogram_quantile(0.95" in rules["MasenetHighLatencyP95"]["expr"]
    assert {"MasenetStreamsReconnecting", "MasenetStreamsUnheld", "MasenetStreamLatencyP95"} <= set(rules)
    # Stopped and failed streams stay counted for MASENET_STREAM_TTL_S: only live statuses say something now.
    for name in ("MasenetStreamsReconnecting", "MasenetStreamsUnheld"):
        assert "masenet_streams{" in rules[name]["expr"] and "failed" not in rules[name]["expr"], name
    assert "masenet_streams_held" in rules["MasenetStreamsUnheld"]["expr"]
    assert "histogram_quantile(0.95" in rules["MasenetStreamLatencyP95"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheus_discovers_the_compose_services_on_their_ports() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    discovered = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", "Docker's DNS answers A records, one per container"
            for name in sd["names"]:
                discovered[name] = sd["port"]
    assert set(discovered) <= set(compose()["services"])
    assert discovered == {"api": API_PORT, "worker": WORKER_METRICS_PORT}
    assert "prometheus" in {job["job_name"] for job in config["scrape_configs"]}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Each query becomes a recording rule, so promtool parses it exactly as Prometheus would.
    queries = [expr for _, expr in dashboard_queries()]
    rules = [{"record": f"masenet_dashboard:query_{index}", "expr": expr} for index, expr in enumerate(queries)]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run_tool([promtool(), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# ----------------------------------------------------------------------------------------------- metric names


def test_metric_names_follow_the_contract() -> None:
    unknown = used_metric_names() - CONTRACT_METRICS
    assert not unknown, f"queries use metrics outside the agreed list: {sorted(unknown)}"


def test_metric_names_are_defined_by_the_code() -> None:
    defined = code_metric_names()
    # prometheus-client adds `_total` to counters, so a counter may be declared with or without it.
    missing = sorted(
        name for name in used_metric_names() if name not in defined and name.removesuffix("_total") not in defined
    )
    assert not missing, f"the dashboard or the alerts use metrics that service/ and worker/ never define: {missing}"


# ----------------------------------------------------------------------------------------------- Grafana


def test_dashboard_has_stable_uid_unique_ids_and_queries() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "masenet-overview"
    assert dashboard["id"] is None, "a provisioned dashboard must not carry a database id"
    all_panels = [panel for top in dashboard["panels"] for panel in (top, *top.get("panels", []))]
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        exprs = [target.get("expr", "").strip() for target in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel['title']!r} has a target without a query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r} repeats a refId"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"


def test_dashboard_refers_to_the_provisioned_datasource_by_uid() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host in compose()["services"] and int(port) == 9090
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    for variable in load_dashboard()["templating"]["list"]:
        assert variable["datasource"]["uid"] == datasource["uid"]


def test_dashboard_covers_every_topic() -> None:
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needle in (
        "rate(masenet_http_requests_total",  # requests/s
        "rate(masenet_images_processed_total",  # images/s
        "histogram_quantile(0.5, sum by (le) (rate(masenet_http_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(masenet_http_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(masenet_http_request_duration_seconds_bucket",
        "masenet_batch_size_bucket",  # batch size distribution
        "masenet_batch_size_sum",  # mean batch size
        "masenet_queue_depth",
        "masenet_queue_wait_seconds_bucket",
        "masenet_gpu_utilization_ratio",
        "masenet_gpu_memory_used_bytes",
        'masenet_http_requests_total{status=~"5.."}',
        "masenet_rejected_requests_total",
        "masenet_job_failures_total",
        "masenet_video_jobs_total",
        "max by (status) (masenet_streams)",  # live streams by status
        "sum by (outcome) (rate(masenet_stream_frames_total",
        "histogram_quantile(0.5, sum by (le) (rate(masenet_stream_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(masenet_stream_latency_seconds_bucket",
        "masenet_stream_reconnects_total",
        "masenet_streams_held",
        "histogram_quantile(0.95, sum by (le, class) (rate(masenet_scheduler_wait_seconds_bucket",
        "sum by (class) (rate(masenet_scheduler_passes_total",
    ):
        assert needle in exprs, f"no dashboard query uses {needle}"


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    mounts = dict(volume.split(":")[1::-1] for volume in service("grafana")["volumes"])
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
