"""What span export costs the run log: CPU per logged call with OTLP export on, against off.

Run by hand, never by the test suite:

    python bench/otlp_export.py                  # 5 rounds of 20000 rows per mode
    python bench/otlp_export.py --rounds 3 --rows 5000 --protocol http/protobuf

A RunLog on a temporary SQLite file (the real writer thread) is fed `--rows` records shaped like
an echo call's, from this thread, in bursts of 50 (a busy server's pattern); then it is flushed
and, with export on, the exporter is waited for until every span has been posted. Export goes
to a collector in a subprocess of its own on 127.0.0.1 (`collector`: reads each request,
answers 200), so its CPU is not this process's. Two figures per mode, medians over rounds in
which the modes alternate (off, on, off, on, ...):
- caller CPU per row: this thread's CPU inside `log()`, what a request pays on the event loop;
- process CPU per row: every thread of this process (caller, run-log writer, exporter) from the
  first row until the last span is sent.
The ratios on/off are measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from llmkit.db import Database
from llmkit.otlp_config import OtlpConfig
from llmkit.otlp_export import SpanExporter
from llmkit.runlog import RunLog
from llmkit.runlog_record import RunRecord

BURST = 50


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def collector_main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


def record(i: int) -> RunRecord:
    return RunRecord(
        prompt_key="bench",
        version_number=1,
        version_sha="0" * 40,
        model="echo",
        request={
            "messages": [{"role": "user", "content": f"question {i}"}],
            "params": {"temperature": 0.2, "max_tokens": 64},
        },
        response={
            "id": f"chatcmpl-{i}",
            "model": "echo",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "ok"}}],
        },
        input_tokens=12,
        output_tokens=3,
        latency_ms=1.5,
    )


def one_round(rows: int, exporter: SpanExporter | None) -> tuple[float, float]:
    """(caller CPU s, process CPU s) for `rows` logged calls."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(Path(tmp) / "bench.db")
        runlog = RunLog(db)
        if exporter is not None:
            runlog.add_sink(exporter)
            exporter.start()
        runlog.start()
        records = [record(i) for i in range(rows)]
        caller = 0.0
        process_start = time.process_time()
        for start in range(0, rows, BURST):
            t0 = time.thread_time()
            for rec in records[start : start + BURST]:
                runlog.log(rec)
            caller += time.thread_time() - t0
            time.sleep(0.001)
        assert runlog.flush(60)
        if exporter is not None:
            deadline = time.monotonic() + 60
            while exporter.spans_exported + exporter.spans_dropped < rows:
                if time.monotonic() > deadline:
                    raise SystemExit(f"export stalled: {exporter.health()}")
                time.sleep(0.005)
            if exporter.spans_dropped:
                raise SystemExit(f"spans dropped: {exporter.health()}")
        process = time.process_time() - process_start
        runlog.close()
        if exporter is not None:
            exporter.close()
        db.close()
    return caller, process


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "collector"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--protocol", default="http/json", choices=["http/json", "http/protobuf"])
    args = parser.parse_args()
    if args.mode == "collector":
        return collector_main()
    proc = subprocess.Popen(
        [sys.executable, __file__, "collector"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        config = OtlpConfig(
            endpoint=f"http://127.0.0.1:{port}/v1/traces",
            protocol=args.protocol,
            max_queue=args.rows,
            schedule_delay_s=0.2,
        )
        figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            figures["off"].append(one_round(args.rows, None))
            figures["on"].append(one_round(args.rows, SpanExporter(config)))
    finally:
        proc.terminate()
        proc.wait(10)
    med = {
        mode: tuple(statistics.median(r[k] for r in runs) / args.rows * 1e6 for k in (0, 1))
        for mode, runs in figures.items()
    }
    print(f"{args.rows} rows x {args.rounds} rounds, {args.protocol}; medians, us per row")
    print(
        f"  caller CPU in log():   off {med['off'][0]:7.2f}   on {med['on'][0]:7.2f}"
        f"   ratio x{med['on'][0] / med['off'][0]:.2f}"
    )
    print(
        f"  process CPU per row:   off {med['off'][1]:7.2f}   on {med['on'][1]:7.2f}"
        f"   ratio x{med['on'][1] / med['off'][1]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
