"""A toy hypervisor driver, written the way a third party would: against ``vmctl.spi`` only.

It keeps VMs in a dict per host name. It can create, start, power off, pause and change
vCPUs/memory while stopped, and nothing else: the kit reports the rest as not supported.
"""

from __future__ import annotations

import threading
import uuid as uuidlib

import vmctl
from vmctl import (
    Capability,
    ConnectParams,
    DiskInfo,
    HostInfo,
    NicInfo,
    PowerState,
    StateReason,
    VMConfig,
    VMInfo,
    VMSpec,
)
from vmctl.spi import Deadline, Driver, Pausable, Reconfigurable

_HOSTS: dict[str, dict[str, dict[str, object]]] = {}
_LOCK = threading.Lock()


class ToyDriver(Driver, Pausable, Reconfigurable):
    name = "toy"

    def __init__(self, host: str) -> None:
        self.host = host
        self.vms = _HOSTS.setdefault(host, {})

    @classmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> ToyDriver:
        if params.options:
            raise vmctl.ValidationError(f"toy:// takes no options, got {sorted(params.options)}")
        return cls(params.uri.host or "toy")

    def close(self) -> None:
        pass

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        # Reconfigurable offers hot changes too; the toy only changes stopped VMs.
        return offered - {Capability.HOT_VCPUS, Capability.HOT_MEMORY}

    # -- translation helpers --------------------------------------------------------------

    def _vm(self, uuid: str) -> dict[str, object]:
        try:
            return self.vms[uuid]
        except KeyError:
            raise vmctl.NotFound(f"no toy VM {uuid}") from None

    def _info(self, vm: dict[str, object]) -> VMInfo:
        return VMInfo(
            uuid=str(vm["uuid"]),
            name=str(vm["name"]),
            state=PowerState(vm["state"]),
            reason=StateReason(vm["reason"]),
            vcpus=int(vm["vcpus"]),
            memory_mib=int(vm["memory"]),  # type: ignore
            host=self.host,
        )

    def _set(self, uuid: str, frm: set[PowerState], state: PowerState, reason: StateReason) -> None:
        with _LOCK:
            vm = self._vm(uuid)
            if PowerState(vm["state"]) not in frm:
                raise vmctl.InvalidState(f"toy VM is {vm['state']}")
            vm["state"], vm["reason"] = state.value, reason.value

    # -- the SPI --------------------------------------------------------------------------

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        return HostInfo(
            name=self.host,
            hypervisor="toy",
            version="0.1",
            cpus=4,
            cpu_mhz=1000,
            memory_mib=8192,
            vm_count=len(self.vms),
        )

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        with _LOCK:
            return [self._info(vm) for vm in self.vms.values()]

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        with _LOCK:
            return self._info(self._vm(uuid))

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        with _LOCK:
            vm = self._vm(uuid)
            return VMConfig(
                uuid=uuid,
                name=str(vm["name"]),
                vcpus=int(vm["vcpus"]),  # type: ignore
                memory_mib=int(vm["memory"]),  # type: ignore
                disks=tuple(vm["disks"]),
                nics=tuple(vm["nics"]),
            )  # type: ignore

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        with _LOCK:
            if any(vm["name"] == spec.name for vm in self.vms.values()):
                raise vmctl.AlreadyExists(f"toy VM {spec.name!r} exists")
            bad = [n.network for n in spec.nics if n.network != "default"]
            if bad:
                raise vmctl.NotFound(f"toy hosts have only the network 'default', not {bad[0]!r}")
            uuid = str(uuidlib.uuid4())
            self.vms[uuid] = {
                "uuid": uuid,
                "name": spec.name,
                "vcpus": spec.vcpus,
                "memory": spec.memory_mib,
                "state": "stopped",
                "reason": "created",
                "disks": [
                    DiskInfo(id=f"d{i}", size_mib=d.size_mib) for i, d in enumerate(spec.disks)
                ],
                "nics": [
                    NicInfo(
                        id=f"n{i}",
                        network=n.network,
                        mac=n.mac or f"52:54:00:00:{i:02x}:{len(self.vms) % 256:02x}",
                    )
                    for i, n in enumerate(spec.nics)
                ],
            }
            return self._info(self.vms[uuid])

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        with _LOCK:
            vm = self.vms.pop(uuid, None)
            if vm is None:
                raise vmctl.NotFound(f"no toy VM {uuid}")
            return [f"vm {vm['name']}"] + [f"disk {d.id}" for d in vm["disks"]]  # type: ignore

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        self._set(
            uuid, {PowerState.STOPPED, PowerState.CRASHED}, PowerState.RUNNING, StateReason.BOOTED
        )

    def power_off(self, uuid: str, *, deadline: Deadline) -> None:
        self._set(
            uuid,
            {PowerState.RUNNING, PowerState.PAUSED},
            PowerState.STOPPED,
            StateReason.POWERED_OFF,
        )

    def pause(self, uuid: str, *, deadline: Deadline) -> None:
        self._set(uuid, {PowerState.RUNNING}, PowerState.PAUSED, StateReason.USER)

    def unpause(self, uuid: str, *, deadline: Deadline) -> None:
        self._set(uuid, {PowerState.PAUSED}, PowerState.RUNNING, StateReason.RESUMED)

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> None:
        with _LOCK:
            self._vm(uuid)["vcpus"] = vcpus

    def set_memory(self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline) -> None:
        with _LOCK:
            self._vm(uuid)["memory"] = memory_mib
