"""The benchmark suite: trio_sendmail side by side with its peers, in one run.

Usage::

    python bench/run.py            # the full suite (W1-W5), writes bench/RESULTS.md
    python bench/run.py --quick    # tiny workloads: keeps the scripts working (CI)

Servers (all on 127.0.0.1, started and stopped here): Postfix's ``smtp-sink``
(the standard SMTP benchmark sink, in C), ``stunnel`` terminating TLS in front
of it for the TLS rows, and aiosmtpd for a Python-speed server. Clients:
trio_sendmail, aiosmtplib, smtplib, and Postfix's ``smtp-source`` (C, the
practical upper bound). Each client runs in a fresh process; within one
repetition every client of a workload runs in turn against the same server, so
the **ratios** (trio_sendmail / peer) are taken inside one run, and each figure
is the median of the repetitions, with min and max.
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

#: name: (description, params, clients)
WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {
        "title": "2,000 x 2 KiB, 1 recipient, 1 connection, no TLS",
        "params": {"messages": 2000, "size": 2048, "recipients": 1, "connections": 1},
        "clients": ["trio_sendmail", "aiosmtplib", "smtplib", "smtp-source"],
        "server": "sink",
    },
    "W1-aiosmtpd": {
        "title": "W1 against aiosmtpd (a Python-speed server)",
        "params": {"messages": 2000, "size": 2048, "recipients": 1, "connections": 1},
        "clients": ["trio_sendmail", "aiosmtplib", "smtplib"],
        "server": "aiosmtpd",
    },
    "W2": {
        "title": "2,000 x 2 KiB over 8 connections, no TLS",
        "params": {"messages": 2000, "size": 2048, "recipients": 1, "connections": 8},
        "clients": ["trio_sendmail", "aiosmtplib", "smtp-source"],
        "server": "sink",
    },
    "W3": {
        "title": "W2 over implicit TLS",
        "params": {
            "messages": 2000,
            "size": 2048,
            "recipients": 1,
            "connections": 8,
            "tls": True,
        },
        "clients": ["trio_sendmail", "aiosmtplib"],
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
        "clients": ["trio_sendmail", "raw_sslstream"],
        "server": "tls",
    },
    "W5": {
        "title": "10,000 messages x 100 recipients, 1 connection",
        "params": {"messages": 10000, "size": 2048, "recipients": 100, "connections": 1},
        "clients": ["trio_sendmail", "aiosmtplib"],
        "server": "sink",
    },
}

QUICK = {
    "W1": {"messages": 50},
    "W1-aiosmtpd": {"messages": 20},
    "W2": {"messages": 80},
    "W3": {"messages": 40},
    "W4": {"stream_bytes": 4 << 20},
    "W5": {"messages": 10, "recipients": 20},
}

#: (workload, peer, required ratio trio_sendmail / peer)
TARGETS = [
    ("W1", "aiosmtplib", 3.0),
    ("W1", "smtplib", 2.0),
    ("W1", "smtp-source", 1.5),
    ("W2", "aiosmtplib", 2.0),
    ("W2", "smtp-source", 0.35),
    ("W3", "aiosmtplib", 2.0),
    ("W4", "raw_sslstream", 0.8),
    ("W5", "aiosmtplib", 3.0),
]


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


def round_trip_us(port: int, count: int = 300) -> float:
    """The median time of one SMTP round trip (NOOP and its reply) on a blocking
    socket to the sink: the latency a client that waits for every reply pays
    per command. On a virtual machine it moves a lot with how busy the cores
    are (idle cores wake up slowly)."""
    with socket.create_connection((HOST, port)) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # the greeting
        sock.sendall(b"EHLO bench.example.com\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        times = []
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            reader.readline()
            times.append(time.perf_counter() - start)
        sock.sendall(b"QUIT\r\n")
        reader.readline()
    return statistics.median(times) * 1e6


def which(*names: str) -> str:
    for name in names:
        for folder in (os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin").split(":"):
            path = Path(folder) / name
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    raise RuntimeError(f"{' or '.join(names)} not found (nox -s bench installs it)")


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


@contextmanager
def smtp_sink() -> Iterator[int]:
    port = free_port()
    args = [which("smtp-sink"), "-c", "-m", "1000"]
    if os.geteuid() == 0:
        args += ["-u", "postfix" if _user_exists("postfix") else "nobody"]
    with process([*args, f"{HOST}:{port}", "1000"], port):
        yield port


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def tls_sink(folder: Path) -> Iterator[tuple[int, str]]:
    """stunnel terminating implicit TLS in front of smtp-sink; yields (port, cafile)."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(TLS_HOSTNAME, HOST)
    cafile, pem = folder / "ca.pem", folder / "server.pem"
    ca.cert_pem.write_to_path(str(cafile))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    with smtp_sink() as sink_port:
        port = free_port()
        config = folder / "stunnel.conf"
        config.write_text(
            f"foreground = yes\npid =\nsyslog = no\ndebug = 0\n[smtps]\naccept = {HOST}:{port}\n"
            f"connect = {HOST}:{sink_port}\ncert = {pem}\n"
        )
        with process([which("stunnel4", "stunnel"), str(config)], port):
            yield port, str(cafile)


@contextmanager
def aiosmtpd_sink() -> Iterator[int]:
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
    with process([sys.executable, "-c", code], port):
        yield port


def run_client(client: str, params: dict[str, Any]) -> dict[str, Any]:
    if client == "smtp-source":
        return run_smtp_source(params)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(HERE / "clients.py"), client, json.dumps(params)],
        capture_output=True, check=False, env=env, timeout=3600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{client} failed:\n{out.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def run_smtp_source(params: dict[str, Any]) -> dict[str, Any]:
    args = [
        which("smtp-source"), "-d", "-s", str(params["connections"]),
        "-m", str(params["messages"]), "-l", str(params["size"]),
        "-r", str(params["recipients"]), "-f", "bench@example.com", "-t", "sink@example.com",
        "-M", "bench.example.com", f"{HOST}:{params['port']}",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, timeout=3600)
    return {"elapsed": time.perf_counter() - start, "messages": params["messages"],
            "rss_base": 0, "rss_peak": 0}  # fmt: skip


def rate(result: dict[str, Any], params: dict[str, Any]) -> float:
    if params.get("stream_bytes"):
        return float(params["stream_bytes"]) / result["elapsed"] / (1 << 20)  # MiB/s
    return float(result["messages"]) / result["elapsed"]


def run_workload(
    name: str, spec: dict[str, Any], params: dict[str, Any], repeats: int, folder: Path
) -> dict[str, Any]:
    rows: dict[str, list[float]] = {client: [] for client in spec["clients"]}
    rss: dict[str, list[float]] = {client: [] for client in spec["clients"]}
    ratios: dict[str, list[float]] = {c: [] for c in spec["clients"] if c != "trio_sendmail"}
    rtts: list[float] = []
    server = spec["server"]
    for _ in range(repeats):
        if server == "tls":
            context = tls_sink(folder)
        elif server == "aiosmtpd":
            context = aiosmtpd_sink()
        else:
            context = smtp_sink()
        with context as started:
            port, cafile = started if isinstance(started, tuple) else (started, "")
            run_params = dict(params, host=HOST, port=port, tls_hostname=TLS_HOSTNAME,
                              cafile=cafile)  # fmt: skip
            if server == "sink":
                rtts.append(round_trip_us(port))
            this_run: dict[str, float] = {}
            for client in spec["clients"]:
                result = run_client(client, run_params)
                this_run[client] = rate(result, params)
                rows[client].append(this_run[client])
                rss[client].append((result["rss_peak"] - result["rss_base"]) / 1024)
            for client in ratios:
                ratios[client].append(this_run["trio_sendmail"] / this_run[client])
        rtt = f" (round trip {rtts[-1]:.0f} us)" if rtts else ""
        print(f"  {name}: " + ", ".join(f"{c} {v:.0f}" for c, v in this_run.items()) + rtt,
              flush=True)  # fmt: skip

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "title": spec["title"],
        "unit": "MiB/s" if params.get("stream_bytes") else "msgs/s",
        "params": params,
        "rates": {c: summary(v) for c, v in rows.items()},
        "rss_mib": {c: summary(v) for c, v in rss.items()},
        "ratios": {c: summary(v) for c, v in ratios.items()},
        "round_trip_us": summary(rtts) if rtts else None,
    }


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Run on {meta['date']} ({meta['machine']}), {meta['repeats']} repetitions per "
        "workload; each figure is the median (min-max). Ratios are trio_sendmail / peer, "
        "computed inside each repetition. Generated by `nox -s bench` (`bench/run.py`).",
        "",
        "| workload | client | rate | peak RSS above baseline | ratio (trio_sendmail / client) |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        unit = result["unit"]
        for client, r in result["rates"].items():
            ratio = result["ratios"].get(client)
            ratio_text = (
                f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "—"
            )
            rss = result["rss_mib"][client]
            rss_text = f"{rss['median']:.1f} MiB" if client != "smtp-source" else "—"
            lines.append(
                f"| {name} | {client} | {r['median']:.0f} {unit} "
                f"({r['min']:.0f}-{r['max']:.0f}) | {rss_text} | {ratio_text} |"
            )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for workload, peer, wanted in TARGETS:
        ratio = results.get(workload, {}).get("ratios", {}).get(peer)
        if ratio is None:
            continue
        met = "yes" if ratio["median"] >= wanted else "**no**"
        lines.append(
            f"| {workload}: ≥ {wanted}x {peer} | {ratio['median']:.2f}x "
            f"({ratio['min']:.2f}-{ratio['max']:.2f}) | {met} |"
        )
    w4 = results.get("W4")
    if w4:
        rss = w4["rss_mib"]["trio_sendmail"]["median"]
        lines.append(f"| W4: peak RSS ≤ 32 MiB above baseline | {rss:.1f} MiB | "
                     f"{'yes' if rss <= 32 else '**no**'} |")  # fmt: skip
    trips = [(n, r["round_trip_us"]) for n, r in results.items() if r.get("round_trip_us")]
    if trips:
        each = "; ".join(
            f"{n} {t['median']:.0f} µs ({t['min']:.0f}-{t['max']:.0f})" for n, t in trips
        )
        lines += [
            "",
            "Loopback round trip to smtp-sink (a NOOP on a blocking socket, measured before "
            f"each repetition), median (min-max): {each}.",
        ]
    lines += ["", "![benchmark plot](results.png)", "", NOTES]
    return "\n".join(lines)


NOTES = """\
## How to read these figures

- trio_sendmail sends through `send_bulk` over a pool whose `max_connections` is the
  workload's connection count: the way the library moves many messages. Each
  connection pipelines *across* messages (RFC 2920 §3.1): a message's body and final
  dot go out in the same write as the next message's MAIL, RCPT and DATA, so against
  smtp-sink (which has no CHUNKING) a message costs one round trip. smtplib and
  smtp-source wait for the reply to each of MAIL, RCPT, DATA and the dot (four round
  trips); aiosmtplib sends one command at a time too.
- W1 (one connection) is latency-bound for the blocking clients and CPU-bound for
  trio_sendmail: it pays one round trip plus its CPU time per message (about
  150-250 µs of Python here), they pay four waits plus little CPU. How long a wait
  lasts for a process that blocks on every reply varies a lot on this virtual
  machine (smtp-source alone has run W1 at anywhere from ~1,000 to ~6,700 msgs/s);
  when the waits are short, a C client that waits four times can beat one wait
  plus the Python work, so these two ratios move with the machine. The round trip
  line above is the hot minimum (back-to-back NOOPs), not what each client sees.
- W1-aiosmtpd has no target: aiosmtpd does not offer PIPELINING, so every client
  waits for each reply there, and the Python server is the bottleneck; smtplib,
  which spends the least CPU per message, leaves it the most.
- W2 against `smtp-source -s 8` compares CPU per message: the client and smtp-sink
  share the two cores, and smtp-source spends a few µs per message where the Python
  client spends a hundred or more. Its own rate moves by a factor of two between
  repetitions, hence the wide spread of that ratio.
- W3 puts stunnel in front of smtp-sink: TLS costs on both sides, and stunnel
  competes for the same two cores.
- W4 streams 1 GiB from a memory channel; the ceiling is the same bytes written to
  a bare `trio.SSLStream`. The peak RSS column is the memory above the interpreter's
  baseline.
- W5 (100 recipients per message) is where pipelining matters most: aiosmtplib
  waits for each RCPT reply, trio_sendmail sends the whole envelope in one write.
- Rates are medians of the repetitions, with min-max; only the ratios, taken inside
  each repetition, are comparable between runs.
"""


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if results[n]["unit"] == "msgs/s"]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 4))
    for ax, name in zip(axes, [*names, "W4"], strict=False):
        if name not in results:
            ax.axis("off")
            continue
        result = results[name]
        clients = list(result["rates"])
        medians = [result["rates"][c]["median"] for c in clients]
        lows = [m - result["rates"][c]["min"] for c, m in zip(clients, medians, strict=True)]
        highs = [result["rates"][c]["max"] - m for c, m in zip(clients, medians, strict=True)]
        colors = ["tab:green" if c == "trio_sendmail" else "tab:gray" for c in clients]
        ax.bar(clients, medians, yerr=[lows, highs], color=colors, capsize=4)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(result["unit"])
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("trio_sendmail and its peers (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny workloads (smoke test)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs="*", help="workloads to run, e.g. W1 W4")
    parser.add_argument("--output", type=Path, default=None, help="folder for the results")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    output = args.output or (Path(tempfile.mkdtemp()) if args.quick else HERE)
    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, spec in WORKLOADS.items():
            if args.only and name not in args.only:
                continue
            params = dict(spec["params"], **(QUICK[name] if args.quick else {}))
            print(f"{name}: {spec['title']}", flush=True)
            results[name] = run_workload(name, spec, params, repeats, Path(folder))
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "repeats": repeats,
        "quick": args.quick,
    }
    (output / "results.json").write_text(json.dumps({"meta": meta, "results": results},
                                                    indent=2))  # fmt: skip
    table = markdown(results, meta)
    (output / "RESULTS.md").write_text(table)
    try:
        plot(results, output / "results.png")
    except ImportError:  # pragma: no cover - matplotlib is in the bench extra
        print("matplotlib is missing: no plot", file=sys.stderr)
    print(table)
    return 0


if __name__ == "__main__":
    if shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists():
        print(
            "smtp-sink is missing: install Debian's postfix (nox -s bench does)", file=sys.stderr
        )
    sys.exit(main())
