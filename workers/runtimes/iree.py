"""The IREE back end: resident weights, loaded modules, and a `Session` for the decode loop.

A variant's weights are uploaded to the device once and kept for any number of
points (on the CPU drivers the numpy memory itself becomes the device buffer, so a
1B model is held once). The timed path is kept lean: a call invokes the VM function
directly, bypassing `iree.runtime`'s generic argument packing, and its argument list
already holds the resident weights when the clock starts (pushing 151-374 of them
from Python costs 50-120 us, which IREE's own tool never pays). The token readback
is one mapped int32 on the CPU, one copy into a staging buffer made once on a GPU.
The loop itself is `workers.runtimes.session.greedy_decode`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.core.buffers import ALIGNMENT, aligned_empty
from workers.core.kinds import GraphKind
from workers.formats.weights import VariantWeights

_INT32 = np.dtype(np.int32)


class _LoadedModule:
    """One vmfb in its own VM context on the runner's device: a graph's, whose entry point
    is `main`, or one module of a point's graphs (`workers.model.export.ModuleSpec`), whose
    entry points are named by graph kind.

    A module whose weights are parameters (`workers.model.parameters`) is loaded after a
    parameters module that serves the resident weights; its initializers, which pack
    the weights when data tiling hoisted that, run here, once. `load_s` and
    `load_bytes` say what the load cost: its seconds and how much the process grew
    (on a CPU driver the packed copies; on a GPU only host memory counts).
    """

    def __init__(
        self, rt: Any, instance: Any, device: Any, vmfb: bytes, parameters: Any = None
    ) -> None:
        self.vm_module = rt.VmModule.copy_buffer(instance, vmfb)
        modules = [rt.create_hal_module(instance, device)]
        if parameters is not None:
            modules.append(rt.create_io_parameters_module(instance, parameters))
        rss, start = resident_bytes(), time.perf_counter()
        self.context = rt.VmContext(instance, modules=[*modules, self.vm_module])
        self.load_s = time.perf_counter() - start
        self.load_bytes = max(resident_bytes() - rss, 0)
        self.takes_weights = parameters is None
        self._rt = rt

    def entry(self, kind: str) -> _EntryPoint:
        """The entry point of graph `kind`: the module's function of that name, else `main`."""
        function = self.vm_module.lookup_function(kind) or self.vm_module.lookup_function("main")
        if function is None:
            raise RuntimeError(f"the module has neither a {kind} entry point nor main")
        return _EntryPoint(self, function)


class _EntryPoint:
    """One function of a loaded module, called with the runtime's own lists."""

    def __init__(self, module: _LoadedModule, function: Any) -> None:
        self.module, self._function = module, function

    def arguments(self, weights: list[Any], num_dynamic: int) -> Any:
        """A new argument list holding the resident `weights` (unless the module holds
        them as parameters), with room for `num_dynamic` more: built before a timed
        region, finished by `__call__`."""
        static = weights if self.module.takes_weights else []
        arg_list = self.module._rt.VmVariantList(len(static) + num_dynamic)
        for arg in static:
            arg_list.push_ref(arg)
        return arg_list

    def __call__(self, arg_list: Any, dynamic: list[Any], num_results: int) -> list[Any]:
        rt = self.module._rt
        for arg in dynamic:
            arg_list.push_ref(arg)
        ret_list = rt.VmVariantList(num_results)
        self.module.context.invoke(self._function, arg_list, ret_list)
        return [ret_list.get_as_object(i, rt.HalBufferView) for i in range(num_results)]


@dataclasses.dataclass(frozen=True)
class ModuleLoad:
    """What loading a session's modules cost when they were loaded (by this point or an
    earlier one): seconds, initializers included, and the process's growth in bytes."""

    load_s: float = 0.0
    load_bytes: int = 0


def resident_bytes() -> int:
    """This process's resident set in bytes (Linux), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class IreeRunner:
    """Holds one device, the weights resident on it, and the modules loaded on it."""

    def __init__(self, driver: str) -> None:
        import iree.runtime as rt

        self.driver = driver
        self._rt = rt
        self.device = rt.get_device(driver)
        self.num_threads = 0  # local-task workers of `device`; 0: IREE's default topology
        self._token = _TokenReadback(rt, self.device)
        self.instance = rt.VmInstance()
        self._modules: dict[str, _LoadedModule] = {}
        self._parameters: Any = None  # the provider of the resident weights, made on demand
        self._weights_key: str | None = None
        self._weight_views: list[Any] = []
        self._host_arrays: list[np.ndarray] = []  # the resident weights on the host
        self._resident: VariantWeights | None = None
        self._copy_gbps: dict[int, float] = {}
        self.weight_bytes = 0
        self.num_uploads = 0  # how many times weights were uploaded: once per variant held

    # --- threads -------------------------------------------------------------------------

    def use_threads(self, num_threads: int) -> None:
        """Runs the next points with `num_threads` local-task workers (0: IREE's default,
        one per physical core). Other drivers have no workers to set: nothing changes.

        IREE fixes a local-task driver's workers when the driver is made (from its
        `--task_topology_*` flags) and the Python bindings cache one driver per name,
        so a new worker count is a new, uncached driver and device. The resident
        weights move with it: on a CPU driver that re-imports the same host memory (no
        copy, no new upload); the loaded modules are bound to the old device and go.
        """
        if self.driver != "local-task" or num_threads == self.num_threads:
            return
        resident, key = self._resident, self._weights_key
        self.release()
        self._modules.clear()
        self._copy_gbps.clear()
        self.device = _task_device(self._rt, num_threads)
        self._token = _TokenReadback(self._rt, self.device)
        self.num_threads = num_threads
        if resident is not None and key is not None:
            self._hold(key, resident)

    # --- residency -----------------------------------------------------------------------

    @property
    def resident_key(self) -> str | None:
        return self._weights_key

    @property
    def weight_views(self) -> list[Any]:
        return self._weight_views

    @property
    def shares_host_memory(self) -> bool:
        """True for the CPU drivers, whose device buffers are the host arrays themselves."""
        return self.driver.startswith("local-")

    @property
    def resident_variant(self) -> VariantWeights | None:
        """The resident weights as host arrays: the device's own memory on CPU drivers,
        else the one host copy (kept for the XLA reference)."""
        return self._resident

    def release(self) -> None:
        """Frees the resident weights. The loaded modules stay, except those holding the
        weights as parameters: they hold these weights (and their packed copies)."""
        self._modules = {k: m for k, m in self._modules.items() if m.takes_weights}
        self._parameters = None
        self._weight_views, self._host_arrays = [], []
        self._weights_key, self._resident = None, None
        # JAX (the reference) leaves reference cycles that reach arrays aliasing these
        # weights; until the cyclic collector ran, they stayed resident beside the next
        # variant's (6.6 GB instead of 4.9 for the 1B model going from int4 to fp32).
        gc.collect()

    def ensure_weights(self, key: str, make_weights: Callable[[], VariantWeights]) -> float:
        """Makes `key`'s weights resident; returns upload seconds (0 if they already were).

        `make_weights` is called only on a miss and must return the only reference to
        its arrays: on CPU drivers each array becomes the device buffer itself (imported,
        not copied) and on a GPU its original is dropped once copied, so the host never
        holds two copies of the weights. Two arguments that share one array (two views
        of the same bytes) share one device buffer.
        """
        if key == self._weights_key:
            return 0.0
        self.release()  # one resident set at a time
        upload_s = self._hold(key, make_weights())
        self.num_uploads += 1
        return upload_s

    def _hold(self, key: str, vw: VariantWeights) -> float:
        """Makes `vw` (the only reference to its arrays) resident on the device."""
        arrays: list[np.ndarray | None] = list(vw.arrays)
        vw = dataclasses.replace(vw, arrays=())
        buffers: dict[int, tuple[Any, np.ndarray]] = {}  # id(array) -> (buffer, host array)
        start = time.perf_counter()
        for i, spec in enumerate(vw.specs):
            array, arrays[i] = arrays[i], None  # drop the original once it is on the device
            assert array is not None
            if id(array) not in buffers:
                buffers[id(array)] = self._resident_buffer(array)
            buffer, host = buffers[id(array)]
            element_type = _element_type(self._rt, spec.dtype)
            self._weight_views.append(
                self._rt.HalBufferView(buffer, list(spec.shape), element_type)
            )
            self._host_arrays.append(host)
            del array
        upload_s = time.perf_counter() - start
        self._resident = dataclasses.replace(vw, arrays=tuple(self._host_arrays))
        self.weight_bytes = self._resident.nbytes
        self._weights_key = key
        return upload_s

    def _resident_buffer(self, array: np.ndarray) -> tuple[Any, np.ndarray]:
        """(device buffer, the host array to keep) for one weight array.

        The local drivers run on host memory, so importing the numpy allocation makes it
        the device buffer: a 1B fp32 model is held once (4.9 GB), not twice. The import
        does not keep the numpy memory alive (seen with IREE 3.13): the caller does.
        On a GPU the host array is the one copy kept for the XLA reference.
        """
        rt = self._rt
        if self.shares_host_memory:
            array = _aligned(array)
        raw = as_runtime_bytes(array)
        if self.shares_host_memory:
            buffer = self.device.allocator.import_host_allocation(
                raw.reshape(-1),
                memory_type=rt.MemoryType.DEVICE_LOCAL | rt.MemoryType.HOST_VISIBLE,
                allowed_usage=rt.BufferUsage.DEFAULT,
            )
            return buffer, array
        buffer = self.device.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            device=self.device,
            buffer=np.ascontiguousarray(raw).reshape(-1),
        )
        return buffer, array

    def upload(self, array: np.ndarray) -> Any:
        """A device copy of a small input (a prompt, a position)."""
        return device_copy(self._rt, self.device, array)

    def read_tokens(self, view: Any) -> tuple[int, ...]:
        return self._token.read(view)

    def module(self, vmfb: bytes, parameters: bool = False) -> _LoadedModule:
        """The loaded `vmfb`; with `parameters`, bound to the resident weights."""
        key = hashlib.sha256(vmfb).hexdigest()
        if parameters:
            if self._weights_key is None:
                raise RuntimeError("a parameters module before ensure_weights: none resident")
            key = f"{key}/{self._weights_key}"
        if key not in self._modules:
            provider = self._parameter_provider() if parameters else None
            self._modules[key] = _LoadedModule(self._rt, self.instance, self.device, vmfb, provider)
        return self._modules[key]

    def _parameter_provider(self) -> Any:
        """The resident weights as named parameters (`workers.model.parameters.SCOPE`), the
        host arrays wrapped, not copied (`ParameterIndex.add_buffer`)."""
        from workers.model.parameters import SCOPE

        if self._parameters is None:
            assert self._resident is not None
            index = self._rt.ParameterIndex()
            for spec, array in zip(self._resident.specs, self._host_arrays, strict=True):
                index.add_buffer(spec.name, as_runtime_bytes(array))
            self._parameters = index.create_provider(scope=SCOPE)
        return self._parameters

    def score_call(
        self, vmfb: bytes, parameters: bool = False
    ) -> Callable[[np.ndarray], np.ndarray]:
        """A call of a score graph on the resident weights: one window of tokens in, its
        scored logits back on the host (off the timed path: plain `iree.runtime` reads)."""
        module = self.module(vmfb, parameters).entry(GraphKind.SCORE)

        def call(tokens: np.ndarray) -> np.ndarray:
            args = module.arguments(self._weight_views, 1)
            (logits,) = module(args, [self.upload(np.asarray(tokens, np.int32))], 1)
            return self._rt.DeviceArray(self.device, logits).to_host()

        return call

    # --- a session: one graph pair on the resident weights ------------------------------

    def session(
        self,
        prefill_vmfb: bytes,
        decode_vmfb: bytes,
        steps_per_call: int = 1,
        parameters: bool = False,
    ) -> IreeSession:
        """A session on the resident weights; with `parameters`, the vmfbs hold them as
        parameters (`workers.model.parameters`) and load after a parameters module."""
        if self._weights_key is None:
            raise RuntimeError("a session before ensure_weights: no weights are resident")
        prefill = self.module(prefill_vmfb, parameters)
        decode = self.module(decode_vmfb, parameters)
        modules = [prefill] if decode is prefill else [prefill, decode]
        load = ModuleLoad(sum(m.load_s for m in modules), sum(m.load_bytes for m in modules))
        return IreeSession(
            self,
            prefill.entry(GraphKind.PREFILL),
            decode.entry(GraphKind.DECODE),
            steps_per_call,
            load,
        )

    def copy_gbps(self, nbytes: int, repeats: int = 5) -> float:
        """The device's copy bandwidth (read plus write, GB/s) on a working set like `nbytes`.

        The roofline floor of a decode step is its bytes over this. The copy is sized
        like the model but at least 64 MiB: a smaller copy takes tens of microseconds,
        which the submit-and-wait overhead would dominate, understating the bandwidth
        (and a toy model would then seem to beat its floor). At most 512 MiB; the best
        of `repeats` copies counts. Measured once per size per runner.
        """
        size = 1 << min(max(int(nbytes), 1 << 26), 1 << 29).bit_length() - 1
        if size not in self._copy_gbps:
            self._copy_gbps[size] = self._measure_copy(size, repeats)
        return self._copy_gbps[size]

    def _measure_copy(self, size: int, repeats: int) -> float:
        rt = self._rt
        buffers = [
            self.device.allocator.allocate_buffer(
                memory_type=rt.MemoryType.DEVICE_LOCAL,
                allowed_usage=rt.BufferUsage.DEFAULT,
                allocation_size=size,
            )
            for _ in range(2)
        ]
        best = float("inf")
        for _ in range(repeats + 1):  # the first copy also faults the pages in
            sem = self.device.create_semaphore(0)
            start = time.perf_counter()
            self.device.queue_copy(
                buffers[0],
                buffers[1],
                wait_semaphores=rt.HalFence.create_at(sem, 0),
                signal_semaphores=rt.HalFence.create_at(sem, 1),
            )
            rt.HalFence.create_at(sem, 1).wait()
            best = min(best, time.perf_counter() - start)
        return 2 * size / best / 1e9


class IreeSession:
    """The IREE back end of `workers.runtimes.session.greedy_decode`."""

    def __init__(
        self,
        runner: IreeRunner,
        prefill: _EntryPoint,
        decode: _EntryPoint,
        steps_per_call: int = 1,
        load: ModuleLoad = ModuleLoad(),
    ) -> None:
        self._runner, self._prefill, self._decode = runner, prefill, decode
        self._steps_per_call = steps_per_call
        self.load = load  # what loading its modules cost
        # The last call's argument list stays alive until the next call has run: that
        # frees its inputs (the caches of two steps back) inside the timed region, as a
        # real decode loop frees them and as IREE's tool frees each call's outputs. On
        # CUDA a free costs about a millisecond.
        self._held: Any = None

    def prompt_inputs(self, padded: np.ndarray, length: int) -> tuple[Any, ...]:
        upload = self._runner.upload
        return upload(padded), upload(np.array(length, np.int32))

    def position(self, pos: int) -> Any:
        return self._runner.upload(np.array(pos, np.int32))

    def prefill_call(self) -> Callable[..., tuple[Any, Any]]:
        prefill, args = self._prefill, self._prefill.arguments(self._runner.weight_views, 2)

        def call(tokens: Any, real_len: Any) -> tuple[Any, Any]:
            token, kcache, vcache = prefill(args, [tokens, real_len], 3)
            self._held = args
            return token, (kcache, vcache)

        return call

    def decode_call(self) -> Callable[..., tuple[Any, Any, Any]]:
        decode, args = self._decode, self._decode.arguments(self._runner.weight_views, 4)
        if self._steps_per_call == 1:

            def call(token: Any, pos: Any, caches: tuple[Any, Any]) -> tuple[Any, Any, Any]:
                token, kcache, vcache = decode(args, [token, pos, *caches], 3)
                self._held = args
                return token, token, (kcache, vcache)

            return call

        def call_loop(token: Any, pos: Any, caches: tuple[Any, Any]) -> tuple[Any, Any, Any]:
            tokens, last, kcache, vcache = decode(args, [token, pos, *caches], 4)
            self._held = args
            return tokens, last, (kcache, vcache)

        return call_loop

    def read_tokens(self, tokens: Any) -> tuple[int, ...]:
        return self._runner.read_tokens(tokens)


class _TokenReadback:
    """Reads a call's tokens (int32: 4 bytes per step) back to the host.

    A host-visible buffer (local-task) is mapped and read in place; building a
    `DeviceArray` for it cost ~15 us more per step, 5% of a toy model's decode step. A
    device-local one (CUDA) is copied into one small host buffer made once, through one
    timeline semaphore. `DeviceArray.to_host()` would instead register a fresh host
    allocation with the driver and make a semaphore on every step: on an H200 our
    decode steps then ran 6-10% slower than `iree-benchmark-module`'s (see
    benchmarks/fidelity.py).
    """

    def __init__(self, rt: Any, device: Any, *, stage: bool = False) -> None:
        self._rt, self._device = rt, device
        self._host_visible = int(rt.MemoryType.HOST_VISIBLE)
        self._mappable = int(rt.BufferUsage.MAPPING_SCOPED)
        self._stage = stage  # always copy through the host buffer (tests use it on the CPU)
        self._staging: Any = None
        self._semaphore: Any = None
        self._value = 0

    def read(self, view: Any) -> tuple[int, ...]:
        buffer, shape = view.get_buffer(), tuple(view.shape)
        if (
            not self._stage
            and buffer.memory_type() & self._host_visible
            and buffer.allowed_usage() & self._mappable
        ):
            values = view.map().asarray(shape, _INT32)
        else:
            values = self._copy_to_staging(buffer).map().asarray(shape, _INT32)
        return (int(values),) if not shape else tuple(int(v) for v in values)

    def _copy_to_staging(self, buffer: Any) -> Any:
        rt = self._rt
        size = buffer.byte_length()
        if self._staging is None or self._staging.byte_length() != size:
            self._staging = self._device.allocator.allocate_buffer(
                memory_type=rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE,
                allowed_usage=rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED,
                allocation_size=size,
            )
            self._semaphore, self._value = self._device.create_semaphore(0), 0
        done = rt.HalFence.create_at(self._semaphore, self._value + 1)
        self._device.queue_copy(
            buffer,
            self._staging,
            wait_semaphores=rt.HalFence.create_at(self._semaphore, self._value),
            signal_semaphores=done,
        )
        done.wait()
        self._value += 1
        return self._staging


def device_copy(rt: Any, device: Any, array: np.ndarray) -> Any:
    """A buffer view on `device` holding a copy of `array`, typed as the array is."""
    buffer = device.allocator.allocate_buffer_copy(
        memory_type=rt.MemoryType.DEVICE_LOCAL,
        allowed_usage=rt.BufferUsage.DEFAULT,
        device=device,
        buffer=np.ascontiguousarray(as_runtime_bytes(array)).reshape(-1),
    )
    # An explicit view: the buffer protocol would turn a 0-d scalar into shape [1].
    return rt.HalBufferView(buffer, list(array.shape), _element_type(rt, array.dtype.name))


def _task_device(rt: Any, num_threads: int) -> Any:
    """A local-task device of its own driver with `num_threads` workers (0: the default)."""
    from iree._runtime_libs import _runtime

    if num_threads == 0:
        return rt.get_device("local-task")
    # The flag is process-wide and read when a driver is made: set, make, set it back.
    rt.flags.parse_flags(f"--task_topology_max_group_count={num_threads}")
    try:
        driver = _runtime.create_hal_driver("local-task")
    finally:
        rt.flags.parse_flags(f"--task_topology_max_group_count={_DEFAULT_MAX_GROUP_COUNT}")
    return driver.create_default_device()


_DEFAULT_MAX_GROUP_COUNT = 64  # IREE 3.13's default (iree-run-module --help)


def _element_type(rt: Any, dtype: str) -> Any:
    types = {
        "float32": rt.HalElementType.FLOAT_32,
        "bfloat16": rt.HalElementType.BFLOAT_16,
        "float16": rt.HalElementType.FLOAT_16,
        "int32": rt.HalElementType.SINT_32,
        "int8": rt.HalElementType.SINT_8,
        "uint32": rt.HalElementType.UINT_32,
        "uint8": rt.HalElementType.UINT_8,
        "uint4": rt.HalElementType.UINT_4,  # two per byte, low nibble first
    }
    try:
        return types[dtype]
    except KeyError:
        raise ValueError(f"no IREE element type for dtype {dtype}") from None


def as_runtime_bytes(array: np.ndarray) -> np.ndarray:
    """`array` as the runtime's buffer protocol takes it: it knows no bfloat16, so those
    bytes go as uint16."""
    return array.view(np.uint16) if array.dtype.name == "bfloat16" else array


def _aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself if C-contiguous and 64-byte aligned, else an aligned copy."""
    if array.flags.c_contiguous and array.ctypes.data % ALIGNMENT == 0:
        return array
    out = aligned_empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out
