#!/usr/bin/env python3
"""A small p2pshare client in Python: ask the tracker who holds a file, download it from every
holder at once, check it against its content id.

    python p2pshare_client.py --tracker HOST:PORT whohas NAME
    python p2pshare_client.py --tracker HOST:PORT get NAME --out PATH

It speaks only the public API in ../../proto (p2pshare.tracker.v1 and p2pshare.peer.v1). The gRPC
stubs are not committed: they are generated from the .proto files with
`python -m grpc_tools.protoc` into a build directory (default: build/ beside this script) the
first time they are missing or older than the .proto files.

How `get` works:
  1. WhoHas(NAME) on the tracker; the version with the most holders is chosen (or the one whose
     content id starts with --content-id).
  2. GetManifest from a holder: its size, content id and piece count must agree with the tracker.
  3. One thread per holder takes pieces from a shared queue and streams each with GetBlocks,
     writing the blocks at their offsets in a partial file beside the output. A holder that fails
     (or sends blocks that do not fit the request) gives its piece back to the queue and drops out.
  4. The BLAKE3 hash of the whole file must equal the content id; only then is the partial file
     renamed to the output path.

Non-goals, to stay small: per-piece verification (the manifest's piece hashes are BLAKE3 chaining
values; checking them needs BLAKE3's subtree API, which the `blake3` PyPI package does not
expose), resuming interrupted downloads, and duplicating the last pieces to idle holders. The
peer's own downloader (src/peer/download.rs) does all three.

Exit status: 0 on success, 1 on any failure (a gRPC error is reported with its status code name
and message), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
DEFAULT_BUILD_DIR = HERE / "build"
PROTOS = ("tracker.proto", "peer.proto")
GENERATED = ("tracker_pb2.py", "tracker_pb2_grpc.py", "peer_pb2.py", "peer_pb2_grpc.py")

BLOCK_SIZE = 4096
HASH_LEN = 32
DEFAULT_TRACKER_PORT = 8000
# The largest GetBlocks message a peer sends is 256 KiB; leave room.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# RESOURCE_EXHAUSTED (the holder is busy) is retried this many times before giving up on it.
BUSY_RETRIES = 5


class ClientError(Exception):
    """A failure to report to the user: one line, then exit status 1."""


# --- stubs -------------------------------------------------------------------------------------


def ensure_stubs(build_dir: Path, proto_dir: Path) -> None:
    """Generates the Python stubs of proto_dir/*.proto into build_dir if they are missing or older
    than the .proto files, then makes them importable."""
    protos = [proto_dir / p for p in PROTOS]
    missing = [p for p in protos if not p.is_file()]
    if missing:
        raise ClientError(f"cannot find {missing[0]} (use --proto-dir to point at the proto folder)")
    newest_proto = max(p.stat().st_mtime for p in protos)
    outputs = [build_dir / g for g in GENERATED]
    stale = any(not o.is_file() or o.stat().st_mtime < newest_proto for o in outputs)
    if stale:
        generate_stubs(build_dir, proto_dir)
    if str(build_dir) not in sys.path:
        sys.path.insert(0, str(build_dir))


def generate_stubs(build_dir: Path, proto_dir: Path) -> None:
    """Runs `python -m grpc_tools.protoc` into a scratch folder, then moves the results into
    build_dir (so that a concurrent client never imports half-written modules)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    scratch = build_dir / f".gen-{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={scratch}",
        f"--pyi_out={scratch}",
        f"--grpc_python_out={scratch}",
        *PROTOS,
    ]
    result = subprocess.run(command, cwd=proto_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClientError(
            "generating the gRPC stubs failed (is grpcio-tools installed? "
            f"pip install -r {HERE / 'requirements.txt'}):\n{result.stderr.strip()}"
        )
    for produced in scratch.iterdir():
        os.replace(produced, build_dir / produced.name)
    scratch.rmdir()


def import_stubs():
    """The generated modules, imported after ensure_stubs()."""
    import peer_pb2  # noqa: E402  (generated)
    import peer_pb2_grpc  # noqa: E402
    import tracker_pb2  # noqa: E402
    import tracker_pb2_grpc  # noqa: E402

    return tracker_pb2, tracker_pb2_grpc, peer_pb2, peer_pb2_grpc


# --- gRPC helpers ------------------------------------------------------------------------------


def tracker_target(arg: str) -> str:
    """HOST, HOST:PORT, [V6] or [V6]:PORT -> a gRPC target (port 8000 when none is given)."""
    arg = arg.strip()
    if not arg:
        raise ClientError("--tracker is empty")
    if arg.startswith("["):
        return arg if "]:" in arg else f"{arg}:{DEFAULT_TRACKER_PORT}"
    if arg.count(":") == 1:
        return arg
    if arg.count(":") > 1:  # a bare IPv6 address
        return f"[{arg}]:{DEFAULT_TRACKER_PORT}"
    return f"{arg}:{DEFAULT_TRACKER_PORT}"


def open_channel(target: str):
    import grpc

    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_http_proxy", 0),
        ],
    )


def describe_rpc_error(error) -> str:
    """'CODE: message' for a grpc.RpcError."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else None
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details or str(error)}"


def rpc_failure(what: str, where: str, error) -> ClientError:
    return ClientError(f"{what} at {where} failed: {describe_rpc_error(error)}")


# --- whohas ------------------------------------------------------------------------------------


def who_has(stubs, tracker: str, name: str, content_id_prefix: str, timeout: float):
    """The tracker's WhoHasResponse.versions for name."""
    import grpc

    tracker_pb2, tracker_pb2_grpc, _, _ = stubs
    with open_channel(tracker) as channel:
        client = tracker_pb2_grpc.TrackerStub(channel)
        request = tracker_pb2.WhoHasRequest(name=name, content_id_prefix=content_id_prefix)
        try:
            return list(client.WhoHas(request, timeout=timeout).versions)
        except grpc.RpcError as e:
            raise rpc_failure("WhoHas", tracker, e) from None


def version_as_dict(version) -> dict:
    return {
        "name": version.name,
        "size": version.size,
        "content_id": version.content_id,
        "holders": [{"peer_id": h.peer_id, "address": h.address} for h in version.holders],
    }


def cmd_whohas(stubs, args) -> int:
    versions = who_has(stubs, args.tracker, args.name, args.content_id, args.timeout)
    if args.json:
        print(json.dumps({"versions": [version_as_dict(v) for v in versions]}, indent=2))
        return 0
    for v in versions:
        print(f"{v.name}  {v.size} bytes  content {v.content_id}  {len(v.holders)} holder(s)")
        for h in v.holders:
            print(f"  {h.peer_id}  {h.address}")
    return 0


# --- get ---------------------------------------------------------------------------------------


class Plan:
    """Geometry of one download, from a manifest checked against the tracker's version."""

    def __init__(self, version, manifest):
        if manifest.content_id != version.content_id:
            raise ClientError(
                f"manifest is for content {manifest.content_id}, expected {version.content_id}"
            )
        if manifest.size != version.size:
            raise ClientError(f"manifest says {manifest.size} bytes, the tracker says {version.size}")
        piece = manifest.piece_size
        if piece < BLOCK_SIZE or piece % BLOCK_SIZE or piece & (piece - 1):
            raise ClientError(f"manifest piece size {piece} is not a power-of-two number of blocks")
        pieces = -(-manifest.size // piece)
        if len(manifest.piece_hashes) != pieces:
            raise ClientError(
                f"manifest has {len(manifest.piece_hashes)} piece hashes, "
                f"a file of {manifest.size} bytes needs {pieces}"
            )
        if any(len(h) != HASH_LEN for h in manifest.piece_hashes):
            raise ClientError("manifest has a piece hash that is not 32 bytes")
        # A one-piece file's only hash is the hash of the whole file.
        if pieces == 1 and manifest.piece_hashes[0] != bytes.fromhex(version.content_id):
            raise ClientError("manifest's only piece hash is not the content id")
        self.size = manifest.size
        self.piece_size = piece
        self.piece_count = pieces
        self.content_id = version.content_id

    def piece_range(self, index: int):
        """(first byte, length) of a piece."""
        start = index * self.piece_size
        return start, min(self.piece_size, self.size - start)


class BadHolder(Exception):
    """A holder answered GetBlocks with data that does not fit the request."""


class Download:
    """Pieces handed out to one worker thread per holder. A worker takes the next piece, streams it
    with GetBlocks and writes it at its offset; on failure it puts the piece back and stops (the
    other holders finish the job)."""

    def __init__(self, stubs, plan: Plan, holders, fd: int, timeout: float, verbose: bool):
        self.stubs = stubs
        self.plan = plan
        self.holders = list(holders)
        self.fd = fd
        self.timeout = timeout
        self.verbose = verbose
        self.lock = threading.Condition()
        self.pending = collections.deque(range(plan.piece_count))
        self.in_flight = 0
        self.done = 0
        self.pieces_by_holder: Dict[str, int] = {h.peer_id: 0 for h in self.holders}
        self.failures: List[str] = []
        # pwrite is POSIX; elsewhere writes are serialised with seek + write.
        self.write_lock = threading.Lock()

    def run(self) -> None:
        workers = [
            threading.Thread(target=self.worker, args=(h,), name=f"holder-{h.peer_id}", daemon=True)
            for h in self.holders
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if self.done != self.plan.piece_count:
            missing = self.plan.piece_count - self.done
            reasons = "; ".join(self.failures) or "no holder left"
            raise ClientError(f"{missing} of {self.plan.piece_count} pieces could not be downloaded: {reasons}")

    def take(self) -> Optional[int]:
        """The next piece to fetch, or None when there is nothing left for this worker."""
        with self.lock:
            while not self.pending and self.in_flight > 0:
                # Another worker may still fail and give its piece back.
                self.lock.wait(timeout=1.0)
            if not self.pending:
                return None
            self.in_flight += 1
            return self.pending.popleft()

    def finish(self, piece: int, ok: bool) -> None:
        with self.lock:
            self.in_flight -= 1
            if ok:
                self.done += 1
            else:
                self.pending.appendleft(piece)
            self.lock.notify_all()

    def worker(self, holder) -> None:
        import grpc

        _, _, peer_pb2, peer_pb2_grpc = self.stubs
        with open_channel(holder.address) as channel:
            client = peer_pb2_grpc.PeerStub(channel)
            busy_retries = 0
            while True:
                piece = self.take()
                if piece is None:
                    return
                try:
                    self.fetch_piece(client, peer_pb2, piece)
                except grpc.RpcError as e:
                    self.finish(piece, ok=False)
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and busy_retries < BUSY_RETRIES:
                        busy_retries += 1
                        time.sleep(0.2 * busy_retries)
                        continue
                    self.give_up(holder, f"GetBlocks of piece {piece} failed: {describe_rpc_error(e)}")
                    return
                except BadHolder as e:
                    self.finish(piece, ok=False)
                    self.give_up(holder, f"piece {piece}: {e}")
                    return
                except Exception as e:  # e.g. a write error: never leave a piece in flight
                    self.finish(piece, ok=False)
                    self.give_up(holder, f"piece {piece}: {type(e).__name__}: {e}")
                    return
                self.finish(piece, ok=True)
                with self.lock:
                    self.pieces_by_holder[holder.peer_id] += 1
                if self.verbose:
                    print(f"piece {piece} from {holder.peer_id}", file=sys.stderr)

    def give_up(self, holder, why: str) -> None:
        message = f"holder {holder.peer_id} ({holder.address}): {why}"
        print(f"warning: {message}; its pieces go to the other holders", file=sys.stderr)
        with self.lock:
            self.failures.append(message)

    def fetch_piece(self, client, peer_pb2, piece: int) -> None:
        start, length = self.plan.piece_range(piece)
        first_block = start // BLOCK_SIZE
        block_count = -(-length // BLOCK_SIZE)
        request = peer_pb2.GetBlocksRequest(
            file=peer_pb2.FileSelector(content_id=self.plan.content_id),
            first_block=first_block,
            block_count=block_count,
        )
        expected_block = first_block
        offset = start
        end = start + length
        # A piece is at most 16 MiB: allow it a generous time, at least the unary timeout.
        deadline = max(self.timeout, 60.0)
        for message in client.GetBlocks(request, timeout=deadline):
            data = message.data
            if message.first_block != expected_block:
                raise BadHolder(f"sent block {message.first_block}, expected {expected_block}")
            if not data or offset + len(data) > end:
                raise BadHolder(f"sent {len(data)} bytes at offset {offset}, piece ends at {end}")
            if offset + len(data) < end and len(data) % BLOCK_SIZE:
                raise BadHolder(f"sent a partial block ({len(data)} bytes) before the end")
            self.write_at(data, offset)
            offset += len(data)
            expected_block += len(data) // BLOCK_SIZE
        if offset != end:
            raise BadHolder(f"stream ended at byte {offset}, piece ends at {end}")

    def write_at(self, data: bytes, offset: int) -> None:
        if hasattr(os, "pwrite"):
            view = memoryview(data)
            while view:
                written = os.pwrite(self.fd, view, offset)
                view = view[written:]
                offset += written
        else:
            with self.write_lock:
                os.lseek(self.fd, offset, os.SEEK_SET)
                os.write(self.fd, data)


def fetch_manifest(stubs, version, timeout: float):
    """The manifest from the first holder that gives a consistent one, as a Plan."""
    import grpc

    _, _, peer_pb2, peer_pb2_grpc = stubs
    errors = []
    for holder in version.holders:
        with open_channel(holder.address) as channel:
            client = peer_pb2_grpc.PeerStub(channel)
            request = peer_pb2.GetManifestRequest(
                file=peer_pb2.FileSelector(name=version.name, content_id=version.content_id)
            )
            try:
                return Plan(version, client.GetManifest(request, timeout=timeout))
            except grpc.RpcError as e:
                errors.append(str(rpc_failure("GetManifest", f"{holder.peer_id} ({holder.address})", e)))
            except ClientError as e:
                errors.append(f"bad manifest from {holder.peer_id} ({holder.address}): {e}")
    raise ClientError("no holder gave a manifest: " + "; ".join(errors))


def blake3_of_file(path: Path) -> str:
    import blake3

    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(str(path))
    return hasher.hexdigest()


def choose_version(versions, name: str):
    if not versions:
        raise ClientError(f"the tracker lists no holder of {name!r}")
    chosen = versions[0]  # the tracker sorts by most holders first
    if len(versions) > 1:
        others = ", ".join(v.content_id[:12] for v in versions[1:])
        print(
            f"note: {len(versions)} versions of {name!r}; taking {chosen.content_id[:12]} "
            f"({len(chosen.holders)} holders); others: {others} (pick one with --content-id)",
            file=sys.stderr,
        )
    if not chosen.holders:
        raise ClientError(f"the tracker lists {name!r} with no holder")
    return chosen


def cmd_get(stubs, args) -> int:
    versions = who_has(stubs, args.tracker, args.name, args.content_id, args.timeout)
    version = choose_version(versions, args.name)
    plan = fetch_manifest(stubs, version, args.timeout)

    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):
        out = out / version.name
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.p2pshare-part-{os.getpid()}"
    started = time.monotonic()
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            os.ftruncate(fd, plan.size)
            download = Download(stubs, plan, version.holders, fd, args.timeout, args.verbose)
            download.run()
            os.fsync(fd)
        finally:
            os.close(fd)
        actual = blake3_of_file(partial)
        if actual != plan.content_id:
            raise ClientError(f"downloaded data hashes to {actual}, expected content id {plan.content_id}")
        os.replace(partial, out)
    except BaseException:
        try:
            partial.unlink()
        except FileNotFoundError:
            pass
        raise
    seconds = time.monotonic() - started

    by_address = {h.peer_id: h.address for h in version.holders}
    if args.json:
        print(json.dumps({
            "name": version.name,
            "size": plan.size,
            "content_id": plan.content_id,
            "verified": True,
            "path": str(out),
            "piece_size": plan.piece_size,
            "piece_count": plan.piece_count,
            "seconds": round(seconds, 3),
            "pieces_by_holder": download.pieces_by_holder,
        }, indent=2))
    else:
        print(f"got {version.name}: {plan.size} bytes in {seconds:.2f} s, BLAKE3 verified "
              f"(content {plan.content_id}) -> {out}")
        for peer_id, count in download.pieces_by_holder.items():
            print(f"  {peer_id}  {by_address[peer_id]}  {count} of {plan.piece_count} piece(s)")
    return 0


# --- command line ------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="p2pshare_client.py",
        description="Ask a p2pshare tracker who holds a file, and download it from all holders.",
    )
    parser.add_argument("--tracker", default=os.environ.get("P2PSHARE_TRACKER", "127.0.0.1:8000"),
                        help="tracker HOST[:PORT] (default $P2PSHARE_TRACKER or 127.0.0.1:8000)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds allowed for each unary RPC (default 10)")
    parser.add_argument("--build-dir", type=Path,
                        default=Path(os.environ.get("P2PSHARE_PY_BUILD", DEFAULT_BUILD_DIR)),
                        help="where the generated stubs live (default build/ beside this script)")
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR,
                        help="folder of tracker.proto and peer.proto (default ../../proto)")
    commands = parser.add_subparsers(dest="command", required=True)

    whohas = commands.add_parser("whohas", help="list the holders of a file, by version")
    whohas.add_argument("name")
    whohas.add_argument("--content-id", default="", help="only versions whose content id starts with this")
    whohas.add_argument("--json", action="store_true", help="print JSON")

    get = commands.add_parser("get", help="download a file from all its holders")
    get.add_argument("name")
    get.add_argument("--out", required=True, help="output file (or folder: the file's name is kept)")
    get.add_argument("--content-id", default="", help="take the version whose content id starts with this")
    get.add_argument("--json", action="store_true", help="print a JSON summary")
    get.add_argument("-v", "--verbose", action="store_true", help="log every piece to stderr")
    args = parser.parse_args(argv)
    args.tracker = tracker_target(args.tracker)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        ensure_stubs(args.build_dir.resolve(), args.proto_dir.resolve())
        stubs = import_stubs()
        if args.command == "whohas":
            return cmd_whohas(stubs, args)
        return cmd_get(stubs, args)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
