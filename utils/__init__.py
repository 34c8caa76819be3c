"""steprl.utils: plumbing the scripts share (CLI types, bad input, processes, runs, tracking, checkpoints); no
algorithm. Installed as `steprl.utils` (from ./utils) so it never collides with another project's `utils`."""

import contextlib
import ctypes
import difflib
import fcntl
import importlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from fractions import Fraction
from typing import Annotated

import numpy as np
import torch
import torch.distributed as dist
from tyro.constructors import PrimitiveConstructorSpec


# ---------------------------------------------------------------- CLI types and bad input
def parse_steps(text: str) -> int:
    """'1e6', '1_000_000', '1000000' -> 1000000. Rejects non-integral values such as '1.5', and 'inf' or 'nan'."""
    value = float(text.replace("_", "")) if any(c in text for c in ".eEnN") else int(text.replace("_", ""))
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{text!r} is not a whole number of steps")
    return int(value)


def parse_fraction(text: str) -> Fraction:
    """'0.75' -> 3/4, '1/3' -> 1/3 exactly (no float rounding), '2' -> 2."""
    try:
        return Fraction(text.strip())
    except ZeroDivisionError:
        raise ValueError(f"{text!r} divides by zero") from None
    except ValueError:
        raise ValueError(f"{text!r} is not a ratio; give a number such as 0.75 or a fraction such as 1/3") from None


def _cli_type(metavar: str, parse, types: tuple) -> PrimitiveConstructorSpec:
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar=metavar,
        instance_from_str=lambda args: parse(args[0]),
        is_instance=lambda x: isinstance(x, types) and not isinstance(x, bool),
        str_from_instance=lambda x: [str(x)],
    )


Steps = Annotated[int, _cli_type("INT", parse_steps, (int,))]  # a step count: 1e6, 1_000_000 or 1000000
ExactRatio = Annotated[Fraction, _cli_type("RATIO", parse_fraction, (Fraction, int))]  # 0.75 or 1/3, never a float


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def fail(flag: str, message: str) -> None:
    """Bad input: one clear line naming the flag and the fix, exit status 2, no traceback (every rank exits)."""
    if is_main_process():  # "\n" in the text: one write per line (torchrun's workers run unbuffered: print's end is a 2nd)
        print(f"error: {flag}: {message}\n", end="", file=sys.stderr, flush=True)
    else:  # most errors stop every rank alike: rank 0 prints, and torchrun stops this rank while it waits. One that lives
        # on meets an error of its own or its node's (a missing module): a node's first rank says so after 5 s, and
        # (if that one did not fail alike and stop the node) any other after 10 s
        time.sleep(5 if os.environ.get("LOCAL_RANK", "0") == "0" else 10)
        print(f"error (rank {os.environ['RANK']}): {flag}: {message}\n", end="", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def warn(message: str) -> None:
    if is_main_process():
        print(f"warning: {message}\n", end="", file=sys.stderr, flush=True)


def check_env_id(env_id: str) -> tuple:
    """Exit 2 unless `env_id` (or `module:EnvId`, gymnasium's import syntax) names a registered env that can be
    created (missing extras such as mujoco or ale-py included). Returns its (observation, action) spaces."""
    import gymnasium as gym

    name, builtin = env_id, set(gym.registry)  # ids registered before the module's import need no module prefix
    if ":" in env_id:
        if os.getcwd() not in sys.path:  # `python path/to/script.py` puts the script's folder first, not the cwd
            sys.path.append(os.getcwd())
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception as e:  # not found, or broken (a SyntaxError in the user's module is an error of theirs too)
            fail("--env-id", f"cannot import module {module!r} to register {name!r} ({type(e).__name__}: {e})")
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.6)
        close = [f"{module}:{c}" if name != env_id and c not in builtin else c for c in close]  # ids that work as --env-id
        hint = f"closest registered ids: {', '.join(close)}" if close else "see gymnasium.pprint_registry()"
        if name == env_id and name.startswith("ALE/"):  # Atari ids exist once ale_py is imported
            hint = f"Atari ids are registered by ale_py: `pip install ale-py`, then `--env-id ale_py:{name}`"
        fail("--env-id", f"unknown environment {name!r}; {hint}")
    try:
        env = gym.make(env_id)
    except Exception as e:
        fail("--env-id", f"cannot create {env_id}: {type(e).__name__}: {e}")
    try:  # one reset and one step now: an env off gymnasium's API would fail later, in the vector env, with a traceback
        first, last = env.reset(seed=0), env.step(env.action_space.sample())
        assert isinstance(first, tuple) and len(first) == 2, "reset() must return (observation, info)"
        assert isinstance(last, tuple) and len(last) == 5 and np.ndim(last[1]) == 0, (  # a reward of shape (1,) fails late
            "step() must return (obs, reward, terminated, truncated, info) with a scalar reward")  # fmt: skip
    except (AssertionError, ValueError, TypeError) as e:  # raised by gymnasium's checker and wrappers, or above
        if not re.search(r"[/\\](gymnasium|steprl|utils)[/\\]", traceback.extract_tb(e.__traceback__)[-1].filename):
            raise  # a bug in the env's own code: its traceback shows where
        fail("--env-id", f"{env_id} does not follow gymnasium's API: {str(e).splitlines()[0] if str(e) else repr(e)}")
    space = env.observation_space
    for key, box in space.spaces.items() if isinstance(space, gym.spaces.Dict) else [(None, space)]:
        for obs in (first[0], last[0]) if isinstance(box, gym.spaces.Box) else ():
            got = np.shape(obs if key is None else obs.get(key) if isinstance(obs, dict) else None)
            if got != box.shape:
                fail("--env-id", f"{env_id} returned an observation{f' {key!r}' if key else ''} of shape {got}; its "
                     f"observation_space asks for {box.shape}")  # fmt: skip
    env.close()
    return space, env.action_space


# ---------------------------------------------------------------- processes (torchrun)
def keep_freed_memory() -> None:
    """Keep freed blocks in glibc's heap (elsewhere a no-op): by default each large temporary of an update is mapped
    afresh, about 250 page faults per SAC gradient step (their cost: benchmarks/results/speed/NOTES.md, run E).
    Up to 1 GiB of freed memory per process stays reserved; MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ are overridden."""
    if platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks under 32 MB come from the heap (the buffers stay mapped)
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: hand heap memory back to the OS only past 1 GiB free


def env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
        assert 0 < value < math.inf
    except (ValueError, AssertionError):
        fail(name, f"got {os.environ[name]!r}; give a positive number of seconds (default {default:g})")
    return value


def setup_distributed(cuda: bool, threads: int) -> tuple[int, int, int, torch.device]:
    """Read torchrun's RANK/LOCAL_RANK/WORLD_SIZE; start the process group only when WORLD_SIZE > 1."""
    keep_freed_memory()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if cuda and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(threads)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=env_seconds("STEPRL_TIMEOUT", 1800))  # of a collective (torch's default)
        # joining has its own, shorter timeout: a rank that failed before joining (on another node, whose torchrun agent
        # does not stop this one) would otherwise keep the others waiting for the full 30 minutes
        join = timedelta(seconds=env_seconds("STEPRL_JOIN_TIMEOUT", 300))
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # hosted by torchrun, else by rank 0
        try:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  rank == 0 and not agent_store, join)  # fmt: skip
            store = join_attempt(store, rank, world_size, time.monotonic() + join.total_seconds())
        except Exception as e:
            why = f"not all {world_size} processes joined within {join.total_seconds():.0f} s; one failed before joining"
            print(f"error (rank {rank}): {why}, see its output ({type(e).__name__})\n", end="", file=sys.stderr, flush=True)
            os._exit(1)
        store.set_timeout(timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        STORE[:] = [store]
        TORCH_HOOK[:], sys.excepthook = [sys.excepthook], lost_peer  # torch's hook prints a traceback per rank
    return rank, local_rank, world_size, device


STORE: list = []  # the job's key-value store (torchrun's or rank 0's), once the process group is up
TORCH_HOOK: list = []  # torch.distributed's excepthook, which lost_peer hands every other error
ATTEMPT: list[int] = []  # this launch's attempt (1 = the first), the same on every rank; see join_attempt


def join_attempt(store, rank: int, world_size: int, deadline: float):
    """The store under this attempt's prefix, once every rank joined. torchrun's store outlives restarts, and a key the
    killed attempt left (its gloo addresses) fails the new one ("connectFullMesh ... Connection refused"). The prefix
    cannot be TORCHELASTIC_RESTART_COUNT: a node restarted only because another one failed does not count it. Rank 0
    numbers the attempts and opens each; a rank that joined a stale one (it died before all joined) follows the new."""
    attempt, here = 0, None
    if rank == 0:
        store.set("steprl/open", str(store.add("steprl/attempts", 1)))
    while not (here and here.check(["all"] if rank else [f"joined_{r}" for r in range(world_size)])):
        opened = int(store.get("steprl/open")) if store.check(["steprl/open"]) else 0  # 0: none open
        if opened not in (0, attempt):
            attempt, here = opened, dist.PrefixStore(f"steprl/attempt_{opened}", store)
            here.set(f"joined_{rank}", "1")
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)
    if rank == 0:
        store.set("steprl/open", "0")  # closed before "all": a rank that reads a number never joins a started attempt
        here.set("all", "1")
    ATTEMPT[:] = [attempt]
    return here


def restarted() -> bool:  # a worker torchrun restarted, after this node's failure or another's
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 or (ATTEMPT or [1])[0] > 1


def lost_peer(kind, value, tb) -> None:
    """A collective that failed because another rank stopped (often after its own one-line error): exit 1 with one
    line instead of a traceback from every rank. Other errors, a timeout included (a stall, or ranks out of step), keep
    torch's rank-prefixed traceback."""
    if isinstance(value, RuntimeError) and any(s in str(value) for s in ("reset by peer", "closed by peer", "Broken pipe")):
        why = re.sub(r"^\[[^\]]*\] ", "", str(value)).split(". ")[0]  # drop gloo's source location and its advice
        print(f"error (rank {os.environ.get('RANK', 0)}): another process of this job stopped ({why}); its output says "
              "why\n", end="", file=sys.stderr, flush=True)  # fmt: skip
        stop_tracking(1)
        os._exit(1)
    stop_tracking(1)
    TORCH_HOOK[0](kind, value, tb)


def teardown(code: int = 0) -> None:
    """Flush, leave the process group on every rank, and exit without running interpreter finalisers (which can
    abort a finished torchrun worker with 'terminate called without an active exception')."""
    sys.stdout.flush(), sys.stderr.flush()
    if dist.is_available() and dist.is_initialized():
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
    os._exit(code)


def final_exit_code(code: int, world_size: int) -> int:
    """Rank 0's exit `code` on every rank. The others wait through the store, with no time limit: rank 0's evaluation
    may take longer than the timeout of a collective (30 minutes, or STEPRL_TIMEOUT seconds)."""
    if world_size == 1:
        return code
    if is_main_process():
        STORE[0].set("exit_code", str(code))
    STORE[0].wait(["exit_code"], timedelta(days=365))
    return int(STORE[0].get("exit_code"))


def all_reduce_grads(params: list[torch.Tensor], world_size: int) -> None:
    """Average the gradients of `params` over all ranks in one flat all-reduce."""
    if world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    for g, new in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(new.view_as(g))


def all_sum(values: list[float], world_size: int) -> list[float]:  # a few numbers summed over ranks (float64)
    if world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj, world_size: int) -> list:  # one picklable object from each rank, in rank order
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, world_size: int):  # rank 0's `obj` on every rank
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_everything(seed: int, torch_deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


# ---------------------------------------------------------------- runs, tracking
RUN_DIR: list[str] = []  # this process's run directory, once resolve_run_name has chosen it
RUN_LOCK: list = []  # rank 0's open lock file of that directory (flock: released when the process ends)
NO_RESUME: list[str] = []  # set by a script whose checkpoints cannot resume training: why, for the interrupt hint


def resolve_run_name(run_name: str | None, prefix: str, runs_root: str, world_size: int, resume: str) -> str:
    """The run directory's name, the same on every rank: `{prefix}__{timestamp}` ('/' and ':' as '-'), or, for a worker
    restarted by `torchrun --max-restarts` that may resume, its first attempt's run (with `--resume no`, a new one)."""
    prefix = prefix.replace("/", "-").replace(":", "-")
    elastic_id, again = os.environ.get("TORCHELASTIC_RUN_ID"), restarted()
    if is_main_process():
        created, restarts = False, int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
        if restarts and resume == "no":  # said at every attempt's start, before any step is lost
            warn(f"--resume no: torchrun restarts failed workers (up to {restarts} times), but a restart cannot continue this "
                 "run from its checkpoints; give --resume auto and --checkpoint-every N")  # fmt: skip
        if run_name is None and elastic_id not in (None, "none") and again and resume != "no":
            marker = lambda d: os.path.join(runs_root, d, "torchelastic_run_id")  # noqa: E731
            dirs = [d for d in os.listdir(runs_root) if d.startswith(prefix + "__")] if os.path.isdir(runs_root) else []
            run_name = next((d for d in dirs if os.path.exists(marker(d)) and open(marker(d)).read() == elastic_id), None)
            found = os.path.join(runs_root, run_name or "")  # a finished run is only continued from its final checkpoint
            if run_name and os.path.exists(os.path.join(found, "steps.json")) and not list_checkpoints(f"{found}/checkpoints"):
                fail("--resume", f"{found} finished without a checkpoint to continue from: this restart has nothing to do")
        try:
            if run_name is None:
                os.makedirs(runs_root, exist_ok=True)
                stamp = f"{prefix}__{int(time.time())}"
                for run_name in itertools.chain([stamp], (f"{stamp}-{n}" for n in itertools.count(2))):  # same second: -2 ...
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(os.path.join(runs_root, run_name))  # atomic: two processes never get the same directory
                        created = True
                        break
            os.makedirs(os.path.join(runs_root, run_name), exist_ok=True)
            RUN_LOCK[:] = [open(os.path.join(runs_root, run_name, "run.lock"), "a")]  # open while this process lives
            try:  # two launches of one --run-name (a scheduler's requeue while the first still runs) would mix their steps
                fcntl.flock(RUN_LOCK[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fail("--run-name", f"runs/{run_name} is in use by a process that is still running; stop it or choose another")
            if not created:  # a named run: check_run_dir could not tell a restart from a launch that reuses the run id
                check_run_dir(run_name, resume, again, runs_root)
            if elastic_id is not None and (created or not again):  # marks the run as this torchrun launch's
                with open(os.path.join(runs_root, run_name, "torchelastic_run_id"), "w") as f:
                    f.write(elastic_id)
        except OSError as e:
            fail("runs/", f"cannot write {e.filename or runs_root} ({e.strerror}); run from a directory you can write to")
    run_name = broadcast(run_name, world_size)
    RUN_DIR[:] = [os.path.join(runs_root, run_name)]  # for the interrupt hint
    return run_name


def config_dict(args) -> dict:
    """vars(args) with exact ratios as strings, for TensorBoard, W&B and checkpoints."""
    return {k: (str(v) if isinstance(v, Fraction) else v) for k, v in vars(args).items()}


def setup_tracking(args, run_name: str, run_dir: str, purge_step: int):
    """TensorBoard writer for rank 0 (mirrored to W&B with `--track`; honours WANDB_MODE). TensorBoard hides the steps
    from `purge_step` on that earlier attempts of the run logged (a resume logs them again)."""
    from torch.utils.tensorboard import SummaryWriter

    config = config_dict(args)
    if args.track:
        import wandb

        # mirror the scalars only (save=False: copying event files into W&B's folder, inside run_dir, re-mirrors them);
        # patch() instead of sync_tensorboard=True avoids a ~10 s stall at finish()
        wandb.tensorboard.patch(root_logdir=run_dir, save=False)
        id_file = os.path.join(run_dir, "wandb_run_id")  # id and run name: a resume continues its W&B run, nothing else
        saved = open(id_file).read().split("\n") if os.path.exists(id_file) else []
        if saved[1:] != [run_name]:  # a new run, or a copy of another run's directory: a W&B run of its own
            saved = [os.urandom(8).hex(), run_name]
            os.makedirs(run_dir, exist_ok=True)
            with open(id_file, "w") as f:
                f.write("\n".join(saved))
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            config=config,
            name=run_name,
            id=saved[0],
            resume="allow",
            dir=run_dir,
            save_code=True,
        )
        sys.excepthook = lost_peer if TORCH_HOOK else sys.excepthook  # wandb's own hook printed a traceback before ours
        wandb.define_metric("*", step_metric="global_step")  # W&B's x-axis: global policy steps, as TensorBoard's
    writer = SummaryWriter(run_dir, purge_step=purge_step)
    TRACKING[:] = [writer, args.track]
    table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
    return writer


TRACKING: list = []  # rank 0's open (writer, track): a run that stops early closes them, so nothing logged is lost


def close_tracking(writer, track: bool, exit_code: int = 0) -> None:
    TRACKING.clear()
    try:
        writer.close()  # flushes; raises on a full disk
    finally:
        if track:
            import wandb

            wandb.finish(exit_code=exit_code)  # offline, a run that skips it keeps none of its W&B data


def stop_tracking(code: int) -> None:
    """Before an early exit: close what is open, in a thread given 10 s (a signal may come while the main thread holds
    the writer's lock). The exit's own line says what went wrong: a failing close (a full disk) adds no traceback."""

    def close(writer, track):
        with contextlib.suppress(Exception):
            close_tracking(writer, track, code)

    if TRACKING:
        closing = threading.Thread(target=close, args=tuple(TRACKING), daemon=True)
        closing.start()
        closing.join(10)


def check_tracking(track: bool) -> None:
    """Exit 2 when `--track` would block on a W&B login prompt."""
    if not track or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    try:
        import wandb

        if wandb.Api().api_key is None:
            raise RuntimeError
    except Exception:
        fail("--track", "no W&B login found: run `wandb login`, or set WANDB_MODE=offline and `wandb sync` later")


def check_run_dir(run_name: str | None, resume: str, again: bool | None = None, runs_root: str = "runs") -> None:
    """Exit 2 when `--run-name` escapes runs/ or reuses a run it cannot continue, or a resume has no run to look in.
    `again`: whether this is a torchrun restart, None before the process group tells (resolve_run_name checks again)."""
    if run_name is None:
        elastic_id = os.environ.get("TORCHELASTIC_RUN_ID")
        if resume == "yes" or (resume == "auto" and elastic_id is None):  # under torchrun its run id marker finds the run
            fail("--resume", f"`--resume {resume}` needs `--run-name NAME` to know which run to continue")
        if resume == "auto" and elastic_id == "none" and os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") != "0":
            fail("--resume", "a restarted worker finds its run by torchrun's run id, which is 'none' for this launch (and "
                 "others like it): add `--standalone` (one node) or a unique `--rdzv-id`, or `--run-name NAME`")  # fmt: skip
        return
    if os.path.isabs(run_name) or ".." in run_name.split("/") or not run_name.strip("./ ") or run_name != run_name.strip():
        fail("--run-name", f"{run_name!r} must be a name or a relative path under runs/; no '..', absolute paths or "
             "surrounding spaces")  # fmt: skip
    run_dir = os.path.join(runs_root, run_name)
    held = os.path.isdir(run_dir) and any(f.startswith("events.out") or f == "steps.json" for f in os.listdir(run_dir))
    checkpointed = bool(list_checkpoints(os.path.join(run_dir, "checkpoints")))
    if resume == "no" and (held or checkpointed):
        how = "continue it with `--resume yes`" if checkpointed else f"it has no checkpoint to continue; delete {run_dir}"
        fail("--run-name", f"{run_dir} already holds a run; {how} or choose another name")
    if resume == "yes" and not checkpointed:  # before the run directory is made
        fail("--resume", f"no checkpoint in {run_dir}/checkpoints; use `--resume auto` to start fresh when there is none")
    elastic_id, marker = os.environ.get("TORCHELASTIC_RUN_ID"), os.path.join(run_dir, "torchelastic_run_id")
    ours = elastic_id not in (None, "none") and os.path.exists(marker) and open(marker).read() == elastic_id
    unfinished = not os.path.exists(os.path.join(run_dir, "steps.json"))  # ours: this launch's first attempt or an old one
    if resume == "auto" and held and not checkpointed and not (ours and unfinished and again is not False):  # a restart
        if ours and again is False and is_main_process():  # an older launch's marker (a reused --rdzv-id): restarts refuse too
            os.remove(marker)
        fail("--resume", f"{run_dir} holds a run without a checkpoint to continue; choose another --run-name, or delete "
             f"{run_dir} to start it over")  # fmt: skip


def check_replay_fits(capacity: int, step_bytes: int, cuda: bool = False) -> None:
    """Exit 2 when full replays of `capacity` steps per rank would not fit in this machine's RAM, or with `cuda` in the
    rank's free GPU memory (now, not as an out-of-memory kill hours into the run)."""
    if cuda and torch.cuda.is_available():  # one rank per GPU
        local, ram, where = 1, torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))[0], "free on its GPU"
    else:
        local, ram = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = f"of RAM on this machine, for {local} process(es)"
    gib, fits = capacity * step_bytes / 2**30, int(0.8 * ram / local / step_bytes)
    if capacity * step_bytes * local > 0.8 * ram:
        fail("--per-rank-buffer-size", f"a full replay takes {gib:.1f} GiB per process ({ram / 2**30:.0f} GiB {where}); "
             f"use at most {fits}")  # fmt: skip


def check_env_output(env_id: str, arrays: list, policy_step: int, rank: int, actions=None) -> None:
    """Exit 1 at the first NaN or inf an env returns (an observation or a reward), or a value float32 cannot hold: it
    would silently poison the networks. Non-finite `actions` (the agent's, checked before the env gets them) are blamed
    instead: training diverged. Tracking is closed first, so no logged scalar is lost."""
    diverged = actions is not None and not np.isfinite(actions).all()
    fits = lambda a: np.asarray(a).dtype.kind != "f" or bool((np.abs(a) <= np.finfo(np.float32).max).all())  # noqa: E731
    if diverged or not all(fits(a) for a in arrays):
        where = f"at policy step {policy_step} (rank {rank})"
        why = (f"training diverged: the agent's actions {where} are not finite; lower the learning rates, or look for NaN "
               "in the losses" if diverged else  # fmt: skip
               f"--env-id: {env_id} returned a non-finite observation or reward {where} (NaN, inf, or beyond float32's "
               "range); fix the env, or wrap it to replace or rescale such values")  # fmt: skip
        print(f"error: {why}\n", end="", file=sys.stderr, flush=True)
        stop_tracking(1)
        os._exit(1)


def interrupt_cleanly() -> None:
    """Ctrl-C, or SIGTERM outside torchrun (a scheduler): one line and exit 128 + signal number, not a traceback or
    silence. torchrun's workers keep SIGTERM's default, so they die at once even when blocked in a collective."""

    main_pid = os.getpid()

    def handler(signum, frame):  # --async-envs workers inherit it: only the main process speaks
        if os.getpid() == main_pid:
            found = list_checkpoints(os.path.join(RUN_DIR[0], "checkpoints")) if RUN_DIR else []
            name = os.path.basename(RUN_DIR[0]) if RUN_DIR else ""
            hint = (f"continue from {found[-1]} with the same flags and `--run-name {name} --resume yes`" if found
                    else "no checkpoint was written yet, so it cannot resume (--checkpoint-every N writes them)")  # fmt: skip
            hint = f"its checkpoints cannot resume training ({NO_RESUME[0]})" if NO_RESUME else hint
            warn(f"{signal.Signals(signum).name}: stopped; {hint if RUN_DIR else 'before the run started'}")
            for child in multiprocessing.active_children():  # --async-envs workers: no pipe-error tracebacks when they
                child.kill()  # find the pipe closed (a SIGINT sent to this process alone does not reach them)
            stop_tracking(128 + signum)
        os._exit(128 + signum)

    for signum in (signal.SIGINT,) if "TORCHELASTIC_RUN_ID" in os.environ else (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


# ---------------------------------------------------------------- checkpoints
def check_resume_args(saved: dict, args, flags: list[str]) -> None:
    """Exit 2 when a flag that shapes the step plan, the buffers or the networks differs from the checkpoint's run."""
    now = config_dict(args)
    diff = [f"--{k.replace('_', '-')} {saved.get(k)} (checkpoint) vs {now[k]} (now)" for k in flags if saved.get(k) != now[k]]
    if diff:
        fix = "Resume with its flags" if saved.get("exp_name") == now["exp_name"] else (  # often a copy of the script
            f"Resume with `--exp-name {saved.get('exp_name')}`, or give a copy of its script its own --run-name")  # fmt: skip
        fail("--resume", "the checkpoint's run used other settings: " + "; ".join(diff) + ". " + fix)
    other = [f"--{k.replace('_', '-')} {saved[k]} -> {now[k]}" for k in now if k in saved and saved[k] != now[k]]
    if other := [o for o in other if not o.startswith(("--resume ", "--checkpoint-every ", "--run-name "))]:  # a slip shows
        warn("--resume: these settings differ from the checkpoint's run and apply from here on: " + "; ".join(other))
    if (every := saved.get("checkpoint_every")) and not now["checkpoint_every"]:  # 0: the default, or left out
        warn(f"--checkpoint-every: not given, so this resumed run writes no checkpoints (its run wrote one every {every} "
             f"policy steps); pass `--checkpoint-every {every}` to keep them")  # fmt: skip


def save_checkpoint(root: str, step: int, shared: dict, local: dict, rank: int, world_size: int, keep: int) -> str:
    """Write `root/step_<step>/` atomically: rank 0 writes `shared.pt`, every rank its `rank<r>.pt`, all into a
    temporary directory that rank 0 renames once every rank is done. Keeps the newest `keep` checkpoints. A failed write
    (a full disk) exits 1 with one line, after closing tracking if this rank is the one failing."""
    final = os.path.join(root, f"step_{step:012d}")
    tmp = final + ".tmp"
    files = {f"rank{rank}.pt": local} | ({"shared.pt": shared} if rank == 0 else {})
    size = sum(t.nbytes for t in torch.utils._pytree.tree_leaves(list(files.values())) if isinstance(t, torch.Tensor))
    if rank == 0 and size > 2**30:  # a pause of seconds to minutes (mostly replay): say what it is
        print(f"checkpoint: writing {size / 2**30:.1f} GiB (rank 0's share) to {tmp} ...", flush=True)
    try:
        os.makedirs(tmp, exist_ok=True)
        for name, state in files.items():
            torch.save(state, os.path.join(tmp, name + ".part"))
            os.replace(os.path.join(tmp, name + ".part"), os.path.join(tmp, name))
    except (OSError, RuntimeError) as e:  # a full disk: torch reports "unexpected pos"; the last checkpoint stays intact
        for name in files:  # this rank's own files (rank 0: the whole directory, which can no longer be completed)
            for path in (os.path.join(tmp, name), os.path.join(tmp, name + ".part")):
                with contextlib.suppress(OSError):
                    os.remove(path)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free / 2**20
        print(f"error: rank {rank} cannot write {tmp} ({str(e).splitlines()[0]}; {free:.0f} MiB free there); earlier "
              "checkpoints are intact\n", end="", file=sys.stderr, flush=True)  # fmt: skip
        stop_tracking(1)
        os._exit(1)
    if world_size > 1:  # every rank's file is written
        dist.barrier()
    if rank == 0:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        stale = [os.path.join(root, d) for d in os.listdir(root) if d.endswith(".tmp")]  # writes a kill interrupted
        for old in list_checkpoints(root)[:-keep] + stale:
            shutil.rmtree(old, ignore_errors=True)
    if world_size > 1:
        dist.barrier()
    return final


def list_checkpoints(root: str) -> list[str]:
    """Complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
    return [os.path.join(root, d) for d in names if os.path.exists(os.path.join(root, d, "shared.pt"))]


def find_checkpoint(root: str, world_size: int) -> str | None:
    """The newest complete checkpoint under `root` as rank 0 sees it (None: there is none), the same on every rank. Exits 2
    when a rank cannot see it: a resume needs `runs/` on one filesystem that all nodes share."""
    found = list_checkpoints(root) if is_main_process() else []
    path = broadcast(found[-1] if found else None, world_size)
    if path and not all(all_gather(os.path.exists(os.path.join(path, "shared.pt")), world_size)):
        fail("--resume", f"some ranks cannot see {path}: run from a directory (runs/) that every node shares")
    return path


def exit_if_complete(run_dir: str, policy_steps: int, eval_episodes: int, world_size: int) -> None:
    """Exit 0 when rank 0's steps.json holds a run of `policy_steps` and, if `eval_episodes`, an evaluation of as many
    episodes: a resume from the final checkpoint (e.g. a torchrun restart after the run ended) has nothing left to do."""
    path = os.path.join(run_dir, "steps.json")
    ledger = json.load(open(path)) if is_main_process() and os.path.exists(path) else {}
    evaluated = ledger.get("eval", {}).get("episodes", 0) >= eval_episodes
    done = ledger.get("plan", {}).get("policy_steps") == policy_steps and (not eval_episodes or evaluated)
    if broadcast(done, world_size):
        if is_main_process():
            print(f"{run_dir} is complete (its steps.json holds all {policy_steps} policy steps and any evaluation asked "
                  "for): nothing to do; a larger --total-steps extends it", flush=True)  # fmt: skip
        teardown(0)


def load_checkpoint(path: str, rank: int, world_size: int) -> tuple[dict, dict]:
    """(shared, this rank's) state, on the CPU: `load_state_dict` moves tensors to the model's device."""

    def load(name: str):  # (state, None) or (None, why it cannot be read)
        try:
            # mmap: a rank's replay is copied into the preallocated buffers from the file, not loaded into RAM beside them
            mmap = name != "shared.pt"  # the small shared state is read at once: its file may be rotated away later
            return torch.load(os.path.join(path, name), map_location="cpu", weights_only=True, mmap=mmap), None
        except Exception as e:  # missing, truncated or not a checkpoint
            return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    advice = "delete that directory to resume from the checkpoint before it"
    shared, error = load("shared.pt")
    if error:
        fail("--resume", f"cannot read {path}/shared.pt ({error}); {advice}")
    if not isinstance(shared, dict) or not {"world_size", "iteration", "args"} <= shared.keys():  # another program's
        fail("--resume", f"{path}/shared.pt is not a checkpoint of these scripts; {advice}")
    if shared["world_size"] != world_size:  # before any rank looks for a rank file that may not exist
        fail("--resume", f"{path} was written by {shared['world_size']} process(es); resume with as many")
    local, error = load(f"rank{rank}.pt")
    errors = all_gather(error, world_size)
    if any(errors):
        bad = [r for r, e in enumerate(errors) if e]
        fail("--resume", f"{path}: cannot read the file of rank(s) {bad} ({errors[bad[0]]}); {advice}")
    return shared, local


def load_states(modules: dict, shared: dict) -> None:
    """`load_state_dict` of each named part; one that does not fit exits 2 naming it and its first mismatch."""
    try:
        for key, module in modules.items():
            module.load_state_dict(shared[key])
    except (KeyError, RuntimeError, ValueError) as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[:2])  # torch's header, then its first mismatch
        fail("--resume", f"the checkpoint's {key!r} does not fit ({why}): the script or env's spaces changed; start a new run")


def rng_state() -> dict:
    """Python, NumPy and torch global RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [],  # this rank's GPU (the current one)
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():  # saved by a run on a GPU: its rank's generator, on this rank's GPU
        torch.cuda.set_rng_state(state["cuda"][0 if len(state["cuda"]) == 1 else torch.cuda.current_device()])  # older: all
