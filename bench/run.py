"""The benchmark suite: trio_sendmail side by side with its peers and a ceiling.

Usage::

    python bench/run.py                 # every workload and the scaling tables
    python bench/run.py --only W2 W6-8  # some workloads (--no-scaling: skip the tables)
    python bench/run.py --quick         # tiny workloads: keeps the scripts working (CI)

Servers (all on 127.0.0.1, started and stopped here, one per repetition):
Postfix's ``smtp-sink`` (in C), ``stunnel`` terminating TLS in front of it,
``bench/delay_proxy.py`` adding 5 ms each way in front of it (W6), and
aiosmtpd (a Python-speed server). Clients (``bench/clients.py``):
trio_sendmail's ``send_bulk`` and its ``open_session`` + ``send`` loop, the
ceiling (``bench/ceiling.py``: a hand-written trio client, no library),
aiosmtplib on asyncio and on uvloop, smtplib, and Postfix's ``smtp-source``.

Fairness: every client runs in a fresh process and warms up on a connection
of its own before it is timed; within a repetition every client of a
workload runs in turn against the same server, in an order that rotates from
one repetition to the next. Each figure is the median of the repetitions with
min and max; ratios are taken inside each repetition. Next to each rate: the
client's CPU time per message (``getrusage``), and smtp-sink's own CPU time
per message (from ``/proc/PID/stat``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
TLS_HOSTNAME = "localhost"

BULK, SESSION, CEILING = "trio_sendmail", "trio_sendmail_session", "ceiling"
ASYNCIO, UVLOOP = "aiosmtplib", "aiosmtplib_uvloop"
#: How each client is named in the tables.
LABELS = {
    BULK: "trio_sendmail send_bulk",
    SESSION: "trio_sendmail open_session + send",
    CEILING: "ceiling (hand-written trio)",
    ASYNCIO: "aiosmtplib (asyncio)",
    UVLOOP: "aiosmtplib (uvloop)",
    "smtplib": "smtplib",
    "smtp-source": "smtp-source (C)",
    "raw_sslstream": "raw trio.SSLStream",
}
PEERS = [BULK, SESSION, CEILING, ASYNCIO, UVLOOP]
SMALL = {"size": 2048, "recipients": 1}

WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {
        "title": "2,000 x 2 KiB, 1 recipient, 1 connection, no TLS",
        "params": {"messages": 2000, **SMALL, "connections": 1},
        "clients": [*PEERS, "smtplib", "smtp-source"],
        "server": "sink",
    },
    "W2": {
        "title": "2,000 x 2 KiB over 8 connections, no TLS",
        "params": {"messages": 2000, **SMALL, "connections": 8},
        "clients": [*PEERS, "smtp-source"],
        "server": "sink",
    },
    "W3": {
        "title": "W2 over implicit TLS (stunnel in front of smtp-sink)",
        "params": {"messages": 2000, **SMALL, "connections": 8, "tls": True},
        "clients": PEERS,
        "server": "tls",
    },
    "W4": {
        "title": "one 1 GiB message streamed over TLS",
        "params": {
            "messages": 1,
            "stream_bytes": 1 << 30,
            "recipients": 1,
            "connections": 1,
            "tls": True,
        },
        "clients": [BULK, "raw_sslstream"],
        "server": "tls",
    },
    "W5": {
        "title": "300 messages x 100 recipients, 1 connection",
        "params": {"messages": 300, "size": 2048, "recipients": 100, "connections": 1},
        "clients": [BULK, SESSION, ASYNCIO],
        "server": "sink",
    },
    "W6-1": {
        "title": "200 x 2 KiB through a delay proxy (5 ms each way), 1 connection",
        "params": {"messages": 200, **SMALL, "connections": 1},
        "clients": [*PEERS, "smtp-source"],
        "server": "delay",
    },
    "W6-8": {
        "title": "1,000 x 2 KiB through a delay proxy (5 ms each way), 8 connections",
        "params": {"messages": 1000, **SMALL, "connections": 8},
        "clients": [*PEERS, "smtp-source"],
        "server": "delay",
    },
    "W1-aiosmtpd": {
        "title": "500 x 2 KiB against aiosmtpd (a Python-speed server), 1 connection",
        "params": {"messages": 500, **SMALL, "connections": 1},
        "clients": [BULK, SESSION, ASYNCIO, "smtplib"],
        "server": "aiosmtpd",
    },
}

QUICK: dict[str, dict[str, Any]] = {
    "W1": {"messages": 60},
    "W2": {"messages": 80},
    "W3": {"messages": 40},
    "W4": {"stream_bytes": 4 << 20},
    "W5": {"messages": 5, "recipients": 20},
    "W6-1": {"messages": 10},
    "W6-8": {"messages": 40},
    "W1-aiosmtpd": {"messages": 20},
}

#: The scaling tables: send_bulk and the ceiling against smtp-sink.
SCALING_CONNECTIONS = [1, 2, 4, 8, 16, 32, 64]
#: (label, size, messages), over 8 connections.
SCALING_SIZES = [("1 KiB", 1024, 2000), ("100 KiB", 100 * 1024, 400), ("10 MiB", 10 << 20, 16)]

#: (workload, what, wanted, description). what: "rate" (trio / peer, in one
#: repetition), "cpu" (trio CPU per message / peer's: at most *wanted*), or
#: "rss" (MiB above the baseline: at most *wanted*).
GOALS: list[tuple[str, str, str, str, float]] = [
    ("W2", BULK, CEILING, "rate", 0.6),
    ("W2", BULK, ASYNCIO, "rate", 3.0),
    ("W2", SESSION, ASYNCIO, "rate", 2.0),
    ("W2", SESSION, BULK, "cpu", 1.3),
    ("W1", BULK, CEILING, "rate", 0.7),
    ("W4", BULK, "raw_sslstream", "rate", 0.9),
    ("W4", BULK, "", "rss", 32.0),
    ("W6-1", BULK, CEILING, "rate", 0.95),
    ("W6-8", BULK, CEILING, "rate", 0.95),
    # Earlier targets, kept for regressions.
    ("W1", BULK, ASYNCIO, "rate", 3.0),
    ("W1", BULK, "smtplib", "rate", 2.0),
    ("W3", BULK, ASYNCIO, "rate", 2.0),
    ("W5", BULK, ASYNCIO, "rate", 3.0),
]


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def which(*names: str) -> str:
    for name in names:
        for folder in (os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin").split(":"):
            path = Path(folder) / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    raise RuntimeError(f"{' or '.join(names)} not found (bench/setup.sh installs it)")


@contextmanager
def process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def smtp_sink() -> Iterator[tuple[int, int]]:
    """A fresh smtp-sink (no CHUNKING, like the one on 127.0.0.1:12525 that
    bench/setup.sh's callers start); yields (port, pid)."""
    port = free_port()
    args = [which("smtp-sink"), "-c", "-m", "1000"]
    if os.geteuid() == 0:
        args += ["-u", "postfix" if _user_exists("postfix") else "nobody"]
    with process([*args, f"{HOST}:{port}", "1000"], port) as proc:
        yield port, proc.pid


@contextmanager
def tls_sink(folder: Path) -> Iterator[tuple[int, int, str]]:
    """stunnel terminating implicit TLS in front of smtp-sink; yields (port, sink pid, cafile)."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(TLS_HOSTNAME, HOST)
    cafile, pem = folder / "ca.pem", folder / "server.pem"
    ca.cert_pem.write_to_path(str(cafile))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    with smtp_sink() as (sink_port, pid):
        port = free_port()
        config = folder / "stunnel.conf"
        config.write_text(
            f"foreground = yes\npid =\nsyslog = no\ndebug = 0\n[smtps]\naccept = {HOST}:{port}\n"
            f"connect = {HOST}:{sink_port}\ncert = {pem}\n"
        )
        with process([which("stunnel4", "stunnel"), str(config)], port):
            yield port, pid, str(cafile)


@contextmanager
def delayed_sink(delay_ms: float = 5.0) -> Iterator[tuple[int, int]]:
    """bench/delay_proxy.py in front of smtp-sink; yields (port, sink pid)."""
    with smtp_sink() as (sink_port, pid):
        port = free_port()
        args = [
            sys.executable,
            str(HERE / "delay_proxy.py"),
            str(port),
            str(sink_port),
            str(delay_ms),
        ]
        with process(args, port):
            yield port, pid


@contextmanager
def aiosmtpd_sink() -> Iterator[tuple[int, int]]:
    port = free_port()
    code = (
        "import asyncio, sys\n"
        "from aiosmtpd.controller import Controller\n"
        "class H:\n"
        "    async def handle_DATA(self, s, se, e):\n"
        "        return '250 2.0.0 Ok'\n"
        f"c = Controller(H(), hostname='{HOST}', port={port}, decode_data=False)\n"
        "c.start()\n"
        "import time\n"
        "while True: time.sleep(3600)\n"
    )
    with process([sys.executable, "-c", code], port) as proc:
        yield port, proc.pid


@contextmanager
def server(kind: str, folder: Path) -> Iterator[tuple[int, int, str]]:
    """(port, pid of the process whose CPU time is the server's, cafile)."""
    if kind == "tls":
        with tls_sink(folder) as started:
            yield started
        return
    factory = {"sink": smtp_sink, "delay": delayed_sink, "aiosmtpd": aiosmtpd_sink}[kind]
    with factory() as (port, pid):
        yield port, pid, ""


def cpu_of(pid: int) -> float:
    """CPU seconds of process *pid* so far, to the nanosecond (the scheduler's
    own count, ``/proc/PID/schedstat``; 0 when unreadable)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):  # every thread
        try:
            total += int(task.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


# ------------------------------------------------------------------ clients


def run_client(client: str, params: dict[str, Any]) -> dict[str, Any]:
    if client == "smtp-source":
        return run_smtp_source(params)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(HERE / "clients.py"), client, json.dumps(params)],
        capture_output=True,
        check=False,
        env=env,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{client} failed:\n{out.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def run_smtp_source(params: dict[str, Any]) -> dict[str, Any]:
    def args(messages: int) -> list[str]:
        return [
            which("smtp-source"),
            "-d",
            "-s",
            str(params["connections"]),
            "-m",
            str(messages),
            "-l",
            str(params["size"]),
            "-r",
            str(params["recipients"]),
            "-f",
            "bench@example.com",
            "-t",
            "sink@example.com",
            "-M",
            "bench.example.com",
            f"{HOST}:{params['port']}",
        ]

    subprocess.run(args(min(50, params["messages"])), check=True, capture_output=True)  # warm-up
    before = os.times()
    start = time.perf_counter()
    subprocess.run(args(params["messages"]), check=True, capture_output=True, timeout=3600)
    elapsed = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "messages": params["messages"],
        "rss_base": 0,
        "rss_peak": 0,
    }


# ------------------------------------------------------------------ running


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_workload(
    name: str, spec: dict[str, Any], params: dict[str, Any], repeats: int, folder: Path
) -> dict[str, Any]:
    clients: list[str] = spec["clients"]
    stream = bool(params.get("stream_bytes"))
    series: dict[str, dict[str, list[float]]] = {
        c: {"rate": [], "cpu": [], "server_cpu": [], "rss": []} for c in clients
    }
    ratios: dict[str, dict[str, list[float]]] = {BULK: {}, SESSION: {}}
    for repetition in range(repeats):
        shift = repetition % len(clients)
        order = clients[shift:] + clients[:shift]  # rotated each repetition
        this_run: dict[str, dict[str, float]] = {}
        with server(spec["server"], folder) as (port, pid, cafile):
            run_params = dict(
                params, host=HOST, port=port, tls_hostname=TLS_HOSTNAME, cafile=cafile
            )
            for client in order:
                server_before = cpu_of(pid)
                result = run_client(client, run_params)
                server_cpu = cpu_of(pid) - server_before
                count = result["messages"] if not stream else params["stream_bytes"] / (1 << 20)
                row = {
                    "rate": count / result["elapsed"],  # msgs/s, or MiB/s for a stream
                    "cpu": result["cpu"] / count * (1 if stream else 1e6),  # µs/msg or s/MiB
                    "server_cpu": server_cpu / count * (1 if stream else 1e6),
                    "rss": (result["rss_peak"] - result["rss_base"]) / 1024,
                }
                this_run[client] = row
                for key, value in row.items():
                    series[client][key].append(value)
        for ours in (BULK, SESSION):
            if ours not in this_run:
                continue
            for peer in clients:
                if peer == ours:
                    continue
                ratios[ours].setdefault(f"rate/{peer}", []).append(
                    this_run[ours]["rate"] / this_run[peer]["rate"]
                )
                if this_run[peer]["cpu"] > 0:
                    ratios[ours].setdefault(f"cpu/{peer}", []).append(
                        this_run[ours]["cpu"] / this_run[peer]["cpu"]
                    )
        print(
            f"  {name} #{repetition + 1}: "
            + ", ".join(f"{c} {r['rate']:.0f} ({r['cpu']:.1f})" for c, r in this_run.items()),
            flush=True,
        )
    return {
        "title": spec["title"],
        "unit": "MiB/s" if stream else "msgs/s",
        "cpu_unit": "CPU s/MiB" if stream else "CPU µs/msg",
        "params": params,
        "server": spec["server"],
        "clients": {c: {k: summary(v) for k, v in s.items()} for c, s in series.items()},
        "ratios": {o: {k: summary(v) for k, v in r.items()} for o, r in ratios.items() if r},
    }


def run_scaling(repeats: int, quick: bool, folder: Path) -> dict[str, Any]:
    """msgs/s and CPU per message of send_bulk and the ceiling against
    connections (2 KiB messages) and against message size (8 connections)."""
    points: list[tuple[str, dict[str, Any]]] = []
    for connections in [1, 8] if quick else SCALING_CONNECTIONS:
        messages = 60 if quick else max(2000, 100 * connections)
        points.append(
            (f"{connections} conn.", {"messages": messages, **SMALL, "connections": connections})
        )
    for name, size, messages in SCALING_SIZES[:2] if quick else SCALING_SIZES:
        points.append(
            (
                name,
                {
                    "messages": 20 if quick else messages,
                    "size": size,
                    "recipients": 1,
                    "connections": 8,
                },
            )
        )
    spec = {"title": "", "clients": [BULK, CEILING], "server": "sink"}
    table: dict[str, Any] = {}
    for point, params in points:
        print(f"scaling: {point}", flush=True)
        table[point] = run_workload(f"scaling {point}", spec, params, repeats, folder)
    return table


# ------------------------------------------------------------------ reporting


def _server(value: float, stream: bool) -> str:
    """The server's CPU figure ("—" when it was not measured)."""
    return "—" if value <= 0 else f"{value:.{3 if stream else 1}f}"


def _fmt(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def label(client: str, result: dict[str, Any]) -> str:
    """How *client* is named in the tables (W4 streams through a session)."""
    if client == BULK and result["unit"] == "MiB/s":
        return "trio_sendmail (open_session, streamed)"
    return LABELS[client]


def goal_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for workload, ours, peer, what, wanted in GOALS:
        result = results.get(workload)
        if result is None or ours not in result["clients"]:
            continue
        if what == "rss":
            rss = result["clients"][ours]["rss"]
            met = rss["median"] <= wanted
            rows.append(
                f"| {workload}: {label(ours, result)} peak RSS ≤ {wanted:g} MiB above "
                f"baseline | {_fmt(rss, 1)} MiB | {'yes' if met else '**no**'} |"
            )
            continue
        ratio = result["ratios"].get(ours, {}).get(f"{what}/{peer}")
        if ratio is None:
            continue
        if what == "rate":
            met = ratio["median"] >= wanted
            text = f"≥ {wanted:g}x {LABELS[peer]} (rate)"
        else:
            met = ratio["median"] <= wanted
            text = f"CPU/msg ≤ {wanted:g}x {LABELS[peer]}'s"
        rows.append(
            f"| {workload}: {label(ours, result)} {text} | {_fmt(ratio, 2)}x | "
            f"{'yes' if met else '**no**'} |"
        )
    return rows


def markdown(results: dict[str, Any], scaling: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = goal_rows(results)
    lines = [
        "# Benchmark results",
        "",
        f"Run on {meta['date']} ({meta['machine']}), {meta['repeats']} repetitions; each "
        "figure is the median (min-max) of the repetitions. Every client ran in a fresh "
        "process, warmed up on a connection of its own, in an order rotated each "
        "repetition; ratios are taken inside each repetition. Generated by `bench/run.py`.",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
        *rows,
    ]
    missed = [row.split(" | ")[0].lstrip("| ") for row in rows if row.endswith("**no** |")]
    if missed:
        lines += ["", "**Not met in this run:** " + "; ".join(missed) + "."]
    for name, result in results.items():
        unit, cpu_unit = result["unit"], result["cpu_unit"]
        stream = unit == "MiB/s"
        lines += [
            "",
            f"## {name}: {result['title']}",
            "",
            f"| client | {unit} | {cpu_unit} | server {cpu_unit} | peak RSS (MiB) "
            "| send_bulk / client (rate) |",
            "|---|---|---|---|---|---|",
        ]
        bulk = result["ratios"].get(BULK, {})
        for client, figures in result["clients"].items():
            ratio = bulk.get(f"rate/{client}")
            rss = "—" if client == "smtp-source" else f"{figures['rss']['median']:.1f}"
            server_cpu = figures["server_cpu"]
            lines.append(
                f"| {label(client, result)} | {_fmt(figures['rate'])} | "
                f"{_fmt(figures['cpu'], 1 if not stream else 3)} | "
                f"{_server(server_cpu['median'], stream)} | {rss} | "
                f"{_fmt(ratio, 2) + 'x' if ratio else '—'} |"
            )
    if scaling:
        lines += [
            "",
            "## Scaling: send_bulk and the ceiling against smtp-sink",
            "",
            "| point | send_bulk msgs/s | send_bulk CPU µs/msg | ceiling msgs/s "
            "| ceiling CPU µs/msg | send_bulk / ceiling (rate) |",
            "|---|---|---|---|---|---|",
        ]
        for point, result in scaling.items():
            b, c = result["clients"][BULK], result["clients"][CEILING]
            ratio = result["ratios"][BULK]["rate/" + CEILING]
            lines.append(
                f"| {point} | {_fmt(b['rate'])} | {_fmt(b['cpu'], 1)} | "
                f"{_fmt(c['rate'])} | {_fmt(c['cpu'], 1)} | {_fmt(ratio, 2)}x |"
            )
    lines += ["", NOTES]
    return "\n".join(lines)


NOTES = """\
## How to read these figures

- **What moves with the machine.** Rates (msgs/s, MiB/s) and CPU µs per
  message move with the machine and with whatever else runs on it; only the
  ratios, taken inside one repetition, carry from one run to another. On 2
  cores the client and the server share the CPU, so a client that is
  CPU-bound sends about 1e6 / (its CPU µs per message + the server's)
  messages per second.
- **send_bulk** pipelines across messages (RFC 2920 §3.1): a message's body
  and final dot go out in the same write as the next message's MAIL, RCPT and
  DATA, so against smtp-sink (no CHUNKING) a message costs one wait. The
  **ceiling** does the same protocol work by hand with no library (a body
  dot-stuffed once, before the clock starts): the bound for a trio client.
- **open_session + send** returns each message's final reply before the next
  one starts: two waits per message (the envelope with DATA, then the body
  after 354). aiosmtplib, smtplib and smtp-source wait for every reply.
- **W6** puts 5 ms each way between client and server (a 10 ms round trip):
  there the number of waits per message decides the rate, not the CPU.
- W4's CPU column is CPU seconds per MiB; the peak RSS column is the memory
  above the process's baseline (after its warm-up).
- The server column is smtp-sink's CPU per message (stunnel's is not
  counted in W3 and W4), and aiosmtpd's in W1-aiosmtpd (every thread of it;
  "—" where a run did not measure it).
"""


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.2))
    for ax, name in zip(axes if len(names) > 1 else [axes], names, strict=True):
        result = results[name]
        clients = list(result["clients"])
        rates = [result["clients"][c]["rate"] for c in clients]
        medians = [r["median"] for r in rates]
        errors = [
            [m - r["min"] for m, r in zip(medians, rates, strict=True)],
            [r["max"] - m for m, r in zip(medians, rates, strict=True)],
        ]
        colors = [
            "tab:green" if c in (BULK, SESSION) else "tab:blue" if c == CEILING else "tab:gray"
            for c in clients
        ]
        ax.bar(range(len(clients)), medians, yerr=errors, color=colors, capsize=3)
        ax.set_xticks(
            range(len(clients)),
            [c.replace("trio_sendmail", "ts") for c in clients],
            rotation=60,
            fontsize=7,
        )
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(result["unit"])
    fig.suptitle("trio_sendmail (green), the ceiling (blue) and peers; higher is better")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs="*", help="workloads to run, e.g. W1 W6-8")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling tables")
    parser.add_argument("--output", type=Path, default=None, help="folder for the results")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="write RESULTS.md and the plot from a results.json",
    )
    args = parser.parse_args()
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        output = args.output or args.render.parent
        (output / "RESULTS.md").write_text(
            markdown(saved["results"], saved["scaling"], saved["meta"]) + "\n"
        )
        plot(saved["results"], output / "results.png")
        return 0
    repeats = args.repeats or (1 if args.quick else 5)
    output = args.output or (Path(tempfile.mkdtemp()) if args.quick else HERE)
    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    scaling: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for workload, spec in WORKLOADS.items():
            if args.only and workload not in args.only:
                continue
            params = dict(spec["params"], **(QUICK[workload] if args.quick else {}))
            if args.quick:
                params["warmup"] = 5
            print(f"{workload}: {spec['title']}", flush=True)
            results[workload] = run_workload(workload, spec, params, repeats, folder)
            # Kept as it goes: a run that fails later still leaves these.
            (output / "results.partial.json").write_text(json.dumps(results, indent=1))
        if not args.no_scaling and not args.only:
            scaling = run_scaling(repeats, args.quick, folder)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "repeats": repeats,
        "quick": args.quick,
    }
    (output / "results.partial.json").unlink(missing_ok=True)
    (output / "results.json").write_text(
        json.dumps({"meta": meta, "results": results, "scaling": scaling}, indent=1)
    )
    table = markdown(results, scaling, meta)
    (output / "RESULTS.md").write_text(table + "\n")
    try:
        plot(results, output / "results.png")
    except ImportError:  # pragma: no cover - matplotlib is in the bench extra
        print("matplotlib is missing: no plot", file=sys.stderr)
    print(table)
    return 0


if __name__ == "__main__":
    if shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists():
        print("smtp-sink is missing: run bench/setup.sh first", file=sys.stderr)
    sys.exit(main())
