#!/usr/bin/python3
"""Checks the users' docker-compose.yml and writes the copy the end-to-end test runs.

usage: compose-for-ci.py SRC DEST

The test runs the service on the host's network (compose.e2e.yml), and Docker refuses host networking
together with published ports; Compose v1 has no way for an override file to drop `ports`. So the test
runs a copy of the users' file with `ports` removed and everything else untouched, after checking here
what only the users' file has: the API published on 127.0.0.1 only, the named volume on /data,
`restart: unless-stopped`, the token from `.env`, and a stop grace above the daemon's shutdown grace.
Runs with Debian's python3, which has PyYAML (docker-compose depends on it).
"""

import re
import sys

import yaml


def seconds(duration):
    """Compose durations such as "30s", "1m30s" or a bare number of seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration)):
        total += float(number) * units[unit]
    return total


def main():
    src, dest = sys.argv[1:3]
    with open(src, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    service = compose["services"]["mapillary-downloader"]
    problems = []
    if service.get("ports") != ["127.0.0.1:8080:8080"]:
        problems.append(f"ports should be exactly 127.0.0.1:8080:8080, not {service.get('ports')}")
    if service.get("restart") != "unless-stopped":
        problems.append(f"restart is {service.get('restart')!r}, not unless-stopped")
    if service.get("env_file") not in (".env", [".env"]):
        problems.append(f"env_file is {service.get('env_file')!r}, not .env")
    if "mapillary-data:/data" not in service.get("volumes", []) or "mapillary-data" not in compose.get("volumes", {}):
        problems.append("no named volume mapillary-data on /data")
    if not service.get("healthcheck", {}).get("test"):
        problems.append("no healthcheck")
    grace = float(service.get("environment", {}).get("MLD__WORKERS__SHUTDOWN_GRACE_SECS", 20))
    if seconds(service.get("stop_grace_period", "10s")) <= grace:
        problems.append(f"stop_grace_period {service.get('stop_grace_period')} is not above the {grace:g} s shutdown grace")
    if problems:
        sys.exit("docker-compose.yml: " + "; ".join(problems))
    del service["ports"]
    with open(dest, "w", encoding="utf-8") as f:
        yaml.safe_dump(compose, f, sort_keys=False)


if __name__ == "__main__":
    main()
