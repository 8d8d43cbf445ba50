"""The KVM driver's translation tables: URIs, states and reasons, errors (libvirt's test
driver supplies real libvirtError objects)."""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

import vmctl
from vmctl import URI, ConnectParams, PowerState, StateReason
from vmctl.spi import Deadline
from vmctl_kvm import KvmDriver, _ties, libvirt_uri
from vmctl_kvm._state import to_power_state

S, R = PowerState, StateReason


def _params(uri: str, **options: str) -> ConnectParams:
    parsed = URI.parse(uri)
    return ConnectParams(uri=parsed, options={**parsed.params, **options})


@pytest.mark.parametrize(
    ("uri", "want"),
    [
        ("qemu:///system", "qemu:///system"),
        ("qemu:///system?pool=p&network=n&type=qemu&shared_storage=yes", "qemu:///system"),
        (
            "qemu+ssh://admin@kvm1.example.com/system?keyfile=/k&pool=x",
            "qemu+ssh://admin@kvm1.example.com/system?keyfile=%2Fk",
        ),
        ("qemu+tcp://10.0.0.2:16509/system", "qemu+tcp://10.0.0.2:16509/system"),
        ("test:///default", "test:///default"),
        ("test:///tmp/node.xml", "test:///tmp/node.xml"),
    ],
)
def test_libvirt_uri_drops_vmctl_options(uri: str, want: str) -> None:
    assert libvirt_uri(_params(uri)) == want


def test_unknown_option_and_scheme_refused() -> None:
    with pytest.raises(vmctl.ValidationError, match="unknown kvm option"):
        libvirt_uri(_params("qemu:///system?colour=red"))
    with pytest.raises(vmctl.ValidationError):
        libvirt_uri(_params("xen:///system"))


@pytest.mark.parametrize(
    ("state", "reason", "saved", "want"),
    [
        (1, 1, False, (S.RUNNING, R.BOOTED)),
        (2, 0, False, (S.RUNNING, R.UNKNOWN)),  # BLOCKED is RUNNING
        (3, 1, False, (S.PAUSED, R.USER)),  # PAUSED stays PAUSED
        (3, 2, False, (S.PAUSED, R.MIGRATED)),  # paused by an outgoing migration
        (3, 3, False, (S.PAUSED, R.SAVED)),  # paused while a save runs
        (5, 0, True, (S.SUSPENDED, R.SAVED)),  # SHUTOFF + managed save image
        (5, 1, False, (S.STOPPED, R.SHUTDOWN)),
        (5, 2, False, (S.STOPPED, R.POWERED_OFF)),  # destroyed
        (5, 3, False, (S.STOPPED, R.CRASHED)),
        (5, 4, False, (S.STOPPED, R.MIGRATED)),
        (5, 5, False, (S.STOPPED, R.SAVED)),
        (6, 1, False, (S.CRASHED, R.CRASHED)),
        (7, 0, False, (S.SUSPENDED, R.USER)),  # PMSUSPENDED
        (0, 0, False, (S.UNKNOWN, R.UNKNOWN)),
    ],
)
def test_state_and_reason_mapping(
    state: int, reason: int, saved: bool, want: tuple[PowerState, StateReason]
) -> None:
    assert to_power_state(state, reason, saved) == want


def test_errors_mapped_by_code_with_cause() -> None:
    pytest.importorskip("libvirt")
    import libvirt

    driver = KvmDriver.open(_params("test:///default"), deadline=Deadline.after(10))
    try:
        with pytest.raises(vmctl.NotFound) as err:
            driver.get_vm(str(uuidlib.uuid4()), deadline=Deadline.after(10))
        assert isinstance(err.value.__cause__, libvirt.libvirtError)
        assert err.value.vendor_code == str(libvirt.VIR_ERR_NO_DOMAIN)
        d10 = Deadline.after(10)
        info = driver.create_vm(vmctl.VMSpec(name="vmctl-kvmtest-err", memory_mib=64), deadline=d10)
        try:
            with pytest.raises(vmctl.InvalidState) as err2:
                driver.set_vcpus(info.uuid, 2, live=True, deadline=d10)  # "domain is not running"
            assert err2.value.vendor_code == str(libvirt.VIR_ERR_OPERATION_INVALID)
            assert isinstance(err2.value.__cause__, libvirt.libvirtError)
            with pytest.raises(vmctl.AlreadyExists):
                driver.create_vm(
                    vmctl.VMSpec(name="vmctl-kvmtest-err", memory_mib=64), deadline=d10
                )
        finally:
            driver.delete_vm(info.uuid, deadline=d10)
    finally:
        driver.close()


def test_unreachable_host_is_connection_error() -> None:
    pytest.importorskip("libvirt")
    with pytest.raises(vmctl.ConnectionError) as err:
        vmctl.connect("qemu+tcp://127.0.0.1:9/system", timeouts=vmctl.Timeouts(connect=10))
    assert err.value.vendor_code in {"38", "39"}  # system error / RPC on connect


def test_credentials_answer_libvirt_prompts() -> None:
    libvirt = pytest.importorskip("libvirt")
    from vmctl_kvm._link import EventHub, Link

    params = ConnectParams(
        uri=URI.parse("qemu+tcp://h/system"), username="admin", password=vmctl.Secret("s3cret")
    )
    link = Link("qemu+tcp://h/system", params, EventHub("h"))
    kinds, callback, _ = link._auth()
    assert libvirt.VIR_CRED_PASSPHRASE in kinds and libvirt.VIR_CRED_AUTHNAME in kinds
    creds = [
        [libvirt.VIR_CRED_AUTHNAME, "user", "root", None, None],
        [libvirt.VIR_CRED_PASSPHRASE, "password", None, None, None],
    ]
    assert callback(creds, None) == 0
    assert [c[4] for c in creds] == ["admin", "s3cret"]
    anonymous = Link(
        "qemu+tcp://h/system", ConnectParams(uri=URI.parse("qemu+tcp://h/system")), EventHub("h")
    )
    creds = [[libvirt.VIR_CRED_PASSPHRASE, "password", None, None, None]]
    assert anonymous._auth()[1](creds, None) == -1  # no password: libvirt fails the auth


def test_no_password_in_errors() -> None:
    pytest.importorskip("libvirt")
    with pytest.raises(vmctl.ConnectionError) as err:
        vmctl.connect(
            "qemu+tcp://admin@127.0.0.1:9/system",
            password="s3cret-pw",
            timeouts=vmctl.Timeouts(connect=10),
        )
    text = f"{err.value} {err.value!r} {err.value.__cause__}"
    assert "s3cret-pw" not in text


def test_deadline_that_never_passes() -> None:
    """Deadline.never() (timeout=None) waits without a bound; threading's waits take None,
    not inf."""
    pytest.importorskip("libvirt")
    driver = KvmDriver.open(_params("test:///default"), deadline=Deadline.never())
    try:
        info = driver.create_vm(
            vmctl.VMSpec(name="vmctl-kvmtest-never", memory_mib=64), deadline=Deadline.never()
        )
        try:
            assert driver.get_vm(info.uuid, deadline=Deadline.never()).name == info.name
            driver.start(info.uuid, deadline=Deadline.never())
            changed = driver.wait_changes({info.uuid: info}, deadline=Deadline.never())
            assert changed[info.uuid] is not None
            assert changed[info.uuid].state is PowerState.RUNNING  # type: ignore[union-attr]
            driver.power_off(info.uuid, deadline=Deadline.never())
        finally:
            driver.delete_vm(info.uuid, deadline=Deadline.never())
    finally:
        driver.close()


# -- what ties a domain to its libvirtd (_ties): the devices qemuMigrationSrcIsAllowed refuses


def _domain(devices: str = "", extra: str = "") -> ET.Element:
    text = f"<domain type='kvm'><name>d</name>{extra}<devices>{devices}</devices></domain>"
    return ET.fromstring(text)


@pytest.mark.parametrize(
    ("devices", "extra", "said"),
    [
        ("<shmem name='ring'><model type='ivshmem-plain'/></shmem>", "", "'ring' (<shmem>"),
        (
            "<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/>"
            "<target dir='share'/></filesystem>",
            "",
            "virtiofs filesystem 'share'",
        ),
        ("<interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>", "", "vDPA"),
        (
            "<disk type='file' device='disk'><source file='/i.qcow2'/><target dev='vda'/>"
            "<transient/></disk>",
            "",
            "transient disk 'vda'",
        ),
        ("", "<cpu><feature policy='require' name='invtsc'/></cpu>", "invtsc"),
    ],
)
def test_devices_libvirt_does_not_migrate_live(devices: str, extra: str, said: str) -> None:
    why = _ties.live_blocker(_domain(devices, extra))
    assert why is not None and said in why and why.startswith("libvirt does not migrate it live")
    assert _ties.pinned(_domain(devices, extra)) is None


@pytest.mark.parametrize(
    ("devices", "extra"),
    [
        ("<shmem name='ring' role='master'><model type='ivshmem-plain'/></shmem>", ""),
        ("<filesystem type='mount'><source dir='/srv'/><target dir='p9'/></filesystem>", ""),
        ("<interface type='network'><source network='default'/></interface>", ""),
        ("<disk type='file' device='disk'><source file='/i'/><target dev='vda'/></disk>", ""),
        (
            "",
            "<cpu><feature policy='require' name='invtsc'/></cpu>"
            "<clock offset='utc'><timer name='tsc' frequency='2400000000'/></clock>",
        ),
        ("", "<cpu><feature policy='disable' name='invtsc'/></cpu>"),
    ],
)
def test_what_libvirt_migrates_live_blocks_nothing(devices: str, extra: str) -> None:
    assert _ties.live_blocker(_domain(devices, extra)) is None


def test_a_host_device_pins_the_domain() -> None:
    dom = _domain(
        "<hostdev mode='subsystem' type='pci'><source><address bus='3'/></source></hostdev>"
    )
    assert "<hostdev>" in (_ties.pinned(dom) or "")
