// Changed block tracking (CBT) as vSphere documents it, on top of govmomi 0.24.2's simulator.
//
// The simulator keeps VirtualMachineConfigSpec.changeTrackingEnabled in config but tracks
// nothing, and has no VirtualMachine.QueryChangedDiskAreas. This file adds both, changing none
// of the library. What it does, and the VMware document each fact comes from:
//
//	| fact | source |
//	|---|---|
//	| changeTrackingEnabled "may only be set if the changeTrackingSupported capability is true"; flat disks on VMFS/NFS support it, so capability.changeTrackingSupported is true for every VM here | vSphere API reference, VirtualMachineConfigSpec.changeTrackingEnabled; VDDK Programming Guide, "Changed Block Tracking on Virtual Disks" |
//	| a change of changeTrackingEnabled "will take effect the next time the virtual machine powers on, resumes from a suspended state, performs a snapshot create/delete/revert operation" (the stun/unstun cycle): config.changeTrackingEnabled shows the setting at once, tracking starts or stops at that moment | VirtualMachineConfigSpec.changeTrackingEnabled |
//	| "Whenever a virtual machine snapshot is created, associated with that snapshot is a changeId"; it is the changeId property of each disk's backing in the snapshot's config.hardware | VDDK guide, "Gathering Changed Block Information"; VirtualDiskFlatVer2BackingInfo.changeId ("The change ID of the virtual disk for the corresponding snapshot or virtual machine") |
//	| a changeId has the form "UUID/N": the UUID names the disk's tracking epoch (its .ctk), N counts the changeIds issued in it, e.g. "52 de 5f 9b 20 c8 49 dd-a8 64 2f 6d 81 4b 2a 86/12" | values shown by real hosts (VDDK samples) |
//	| QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId) -> DiskChangeInfo{startOffset, length, changedArea[]{start, length}}: the areas changed between changeId and the snapshot, for [startOffset, startOffset+length); callers call again from startOffset+length until the whole disk is covered | vSphere API reference, VirtualMachine.QueryChangedDiskAreas and DiskChangeInfo |
//	| snapshot unset: "changes are computed against the 'current' snapshot ... will only work for virtual machines that are powered off" | QueryChangedDiskAreas, parameter snapshot |
//	| changeId "*": the areas of the disk that are in use (allocated), for the baseline (full) backup; allocation "relies on unallocated areas (file holes) in virtual disk, and the LazyZero designation for VMFS blocks": here a hole, or a block that reads as zeroes (the simulator's /folder PUT writes every byte, so a block never written by anyone is all zeroes, as a lazy-zeroed block is) | VDDK guide, "About Changed Block Tracking" |
//	| "may contain false positives ... it is guaranteed that no changes will be missed" | QueryChangedDiskAreas |
//	| faults: FileFault "if the virtual disk files cannot be accessed/queried"; NotFound "if the snapshot specified does not exist"; InvalidArgument "if deviceKey does not specify a virtual disk, startOffset is beyond the end of the virtual disk or changeId is invalid or change tracking is not supported for this particular disk" | QueryChangedDiskAreas, Faults |
//	| "Attempts to collect information about changes that occurred before change tracking was enabled result in a FileFault error" (a snapshot taken while tracking was off; a changeId of an earlier tracking epoch) | VDDK guide, "Gathering Changed Block Information" |
//	| turning tracking off deletes the .ctk files: every changeId of the disk is then unknown | VDDK guide, "Enable Changed Block Tracking" |
//
// How the simulator learns what changed: no guest writes here; disk bytes change through the
// datastore's /folder PUT (which replaces the flat extent) and anything else that writes the
// extent file. So, as a .ctk does, each tracked disk keeps per 64 KiB block the number of the
// changeId at which it last changed; at each changeId the extent is hashed per block (holes by
// SEEK_DATA/SEEK_HOLE, not read; two 64-bit keyed hashes of hash/maphash, 128 bits, about
// twenty times faster than Go 1.19's SHA-256 here) and compared with the previous hashes. Each snapshot keeps a
// copy of that table as of its changeId, as a real snapshot freezes the base disk and its .ctk,
// so a query answers exactly: the blocks whose content differs, no false positives either.
//
// The method itself: the simulator dispatches a call by reflection on the Go type of _this,
// which cannot gain methods from outside the package. changeTracking.wrap sends each
// QueryChangedDiskAreas call to an object of this file (type VmctlChangeTracking, one per VM,
// with the VM's moref value) by rewriting _this, so the simulator's own dispatcher still checks
// the session, locks, encodes the answer and the faults.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	// cbtBlock is the tracking granularity (a .ctk's block size for disks of a few GiB).
	cbtBlock = 64 * 1024
	// cbtMaxAreas bounds the changedArea list of one answer; the caller asks again from
	// startOffset+length, as the reference says callers do.
	cbtMaxAreas = 512
	// cbtEndpointType is the type of the objects QueryChangedDiskAreas calls are routed to.
	cbtEndpointType = "VmctlChangeTracking"
	seekData        = 3 // SEEK_DATA, SEEK_HOLE (lseek(2), Linux)
	seekHole        = 4
)

type blockDigest [16]byte // two keyed 64-bit hashes of a block (digestBlock)

var zeroBlock = make([]byte, cbtBlock)

// diskTrack is one disk's .ctk while tracking is active.
type diskTrack struct {
	file     string // the flat extent's local path
	capacity int64
	epoch    string // the changeId's UUID part
	seq      int    // the number of the last changeId issued
	digests  []blockDigest
	alloc    []bool
	changed  []uint32 // per block: the changeId number of its last change
	stamp    fileStamp
}

// snapDisk is a disk's tracking state frozen at a snapshot's changeId.
type snapDisk struct {
	file     string
	capacity int64
	epoch    string
	seq      int
	alloc    []bool
	changed  []uint32
}

// fileStamp identifies a version of a file: its size, inode and modification time, and when
// it was hashed. The kernel stamps mtime from a coarse clock (a few ms), so a file counts as
// unchanged only if its stamp is the same and it was last modified a second before it was
// hashed: a write after the hashing then necessarily shows a later mtime.
type fileStamp struct {
	size, mtime, hashed int64
	ino                 uint64
}

func statFile(file string) (fileStamp, error) {
	info, err := os.Stat(file)
	if err != nil {
		return fileStamp{}, err
	}
	stamp := fileStamp{size: info.Size(), mtime: info.ModTime().UnixNano()}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		stamp.ino = st.Ino
	}
	return stamp, nil
}

// unchanged tells whether file is still the version s was hashed from.
func (s fileStamp) unchanged(file string) bool {
	now, err := statFile(file)
	if err != nil || s.hashed == 0 || s.hashed-s.mtime < int64(time.Second) {
		return false
	}
	return now.size == s.size && now.mtime == s.mtime && now.ino == s.ino
}

type changeTracking struct {
	mu      sync.Mutex
	vms     map[types.ManagedObjectReference]map[int32]*diskTrack // VMs whose tracking is active
	snaps   map[types.ManagedObjectReference]map[int32]*snapDisk  // snapshot -> its disks (nil: taken untracked)
	snapVM  map[types.ManagedObjectReference]types.ManagedObjectReference
	pending map[types.ManagedObjectReference]bool // snapshots put, not yet made current
	seeds   [2]maphash.Seed
	zero    blockDigest
}

// digestBlock hashes one block with the process's two seeds.
func (t *changeTracking) digestBlock(block []byte) blockDigest {
	var out blockDigest
	for i, seed := range t.seeds {
		var h maphash.Hash
		h.SetSeed(seed)
		_, _ = h.Write(block)
		binary.LittleEndian.PutUint64(out[i*8:], h.Sum64())
	}
	return out
}

func newChangeTracking() *changeTracking {
	t := &changeTracking{
		vms:     make(map[types.ManagedObjectReference]map[int32]*diskTrack),
		snaps:   make(map[types.ManagedObjectReference]map[int32]*snapDisk),
		snapVM:  make(map[types.ManagedObjectReference]types.ManagedObjectReference),
		pending: make(map[types.ManagedObjectReference]bool),
		seeds:   [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
	}
	t.zero = t.digestBlock(zeroBlock)
	return t
}

// Reference is the handler's key in the registry's handler map; no object has this type.
func (t *changeTracking) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmctlChangeTrackingHandler", Value: "vmctl-cbt"}
}

// supportAll marks every VM of the model as supporting change tracking (run once at start).
func (t *changeTracking) supportAll() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			vm.Capability.ChangeTrackingSupported = types.NewBool(true)
		}
	}
}

// --------------------------------------------------------------------------- registry hooks

func (t *changeTracking) PutObject(item mo.Reference) {
	switch obj := item.(type) {
	case *simulator.VirtualMachine:
		obj.Capability.ChangeTrackingSupported = types.NewBool(true)
	case *simulator.VirtualMachineSnapshot:
		t.mu.Lock()
		t.pending[obj.Self] = true
		t.snapVM[obj.Self] = obj.Vm
		t.mu.Unlock()
	}
}

// UpdateObject sees the stun/unstun moments: power on and resume (runtime.powerState
// becoming poweredOn), snapshot create and revert (snapshot.currentSnapshot moving), and the
// disks being replaced (config.hardware.device).
func (t *changeTracking) UpdateObject(item mo.Reference, changes []types.PropertyChange) {
	vm, ok := item.(*mo.VirtualMachine)
	if !ok {
		return
	}
	for _, c := range changes {
		switch c.Name {
		case "runtime.powerState":
			if fmt.Sprint(c.Val) == string(types.VirtualMachinePowerStatePoweredOn) {
				t.stun(vm)
			}
		case "snapshot.currentSnapshot":
			t.stun(vm)
			var current *types.ManagedObjectReference
			switch v := c.Val.(type) {
			case types.ManagedObjectReference:
				current = &v
			case *types.ManagedObjectReference:
				current = v
			}
			if current != nil {
				t.snapshotTaken(vm, *current)
			}
		case "config.hardware.device":
			t.mu.Lock()
			if disks, active := t.vms[vm.Self]; active {
				t.syncDisks(vm, disks)
			}
			t.mu.Unlock()
		}
	}
}

// RemoveObject: a deleted snapshot is a stun/unstun of its VM; a deleted VM takes its
// tracking state along.
func (t *changeTracking) RemoveObject(ref types.ManagedObjectReference) {
	switch ref.Type {
	case "VirtualMachineSnapshot":
		t.mu.Lock()
		vmRef, ok := t.snapVM[ref]
		delete(t.snaps, ref)
		delete(t.snapVM, ref)
		delete(t.pending, ref)
		t.mu.Unlock()
		if vm, found := simulator.Map.Get(vmRef).(*simulator.VirtualMachine); ok && found {
			t.stun(&vm.VirtualMachine)
		}
	case "VirtualMachine":
		t.mu.Lock()
		delete(t.vms, ref)
		for snap, vm := range t.snapVM {
			if vm == ref {
				delete(t.snaps, snap)
				delete(t.snapVM, snap)
				delete(t.pending, snap)
			}
		}
		t.mu.Unlock()
		endpoint := types.ManagedObjectReference{Type: cbtEndpointType, Value: ref.Value}
		if simulator.Map.Get(endpoint) != nil {
			simulator.Map.Remove(endpoint)
		}
	}
}

// stun applies config.changeTrackingEnabled: tracking starts (a new epoch, the disks' content
// now as the baseline) or stops (every changeId forgotten).
func (t *changeTracking) stun(vm *mo.VirtualMachine) {
	want := vm.Config != nil && vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	t.mu.Lock()
	defer t.mu.Unlock()
	disks, active := t.vms[vm.Self]
	switch {
	case want && !active:
		disks = make(map[int32]*diskTrack)
		t.vms[vm.Self] = disks
		t.syncDisks(vm, disks)
	case !want && active:
		delete(t.vms, vm.Self)
	case want && active:
		t.syncDisks(vm, disks)
	}
}

// syncDisks starts tracking the VM's flat disks not tracked yet and forgets removed or
// replaced ones. Called with t.mu held.
func (t *changeTracking) syncDisks(vm *mo.VirtualMachine, disks map[int32]*diskTrack) {
	if vm.Config == nil {
		return
	}
	seen := make(map[int32]bool)
	for _, d := range vm.Config.Hardware.Device {
		disk, file, capacity := flatDisk(d)
		if disk == nil {
			continue
		}
		key := disk.Key
		seen[key] = true
		if cur, ok := disks[key]; ok && cur.file == file && cur.capacity == capacity {
			continue
		}
		track := &diskTrack{file: file, capacity: capacity, epoch: newEpoch()}
		digests, alloc, stamp, err := t.digestFile(file, capacity)
		if err != nil {
			log.Printf("change tracking: %s of %s: %v", file, vm.Self.Value, err)
			delete(disks, key)
			continue
		}
		track.digests, track.alloc, track.stamp = digests, alloc, stamp
		track.changed = make([]uint32, len(digests))
		disks[key] = track
	}
	for key := range disks {
		if !seen[key] {
			delete(disks, key)
		}
	}
}

// snapshotTaken gives a snapshot just created its changeIds: each tracked disk's content is
// compared with the previous changeId's, the changed blocks stamped with the new number.
func (t *changeTracking) snapshotTaken(vm *mo.VirtualMachine, ref types.ManagedObjectReference) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.pending[ref] {
		return // a revert or a removal moved currentSnapshot, not a creation
	}
	delete(t.pending, ref)
	snap, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
	disks, active := t.vms[vm.Self]
	if !ok || !active {
		t.snaps[ref] = nil
		return
	}
	frozen := make(map[int32]*snapDisk)
	ids := make(map[int32]string)
	for key, d := range disks {
		digests, alloc, stamp := d.digests, d.alloc, d.stamp
		var err error
		if !d.stamp.unchanged(d.file) {
			digests, alloc, stamp, err = t.digestFile(d.file, d.capacity)
		}
		if err != nil {
			log.Printf("change tracking: snapshot %s, disk %d: %v", ref.Value, key, err)
			continue
		}
		d.seq++
		for i := range digests {
			if digests[i] != d.digests[i] {
				d.changed[i] = uint32(d.seq)
			}
		}
		d.digests, d.alloc, d.stamp = digests, alloc, stamp
		frozen[key] = &snapDisk{
			file: d.file, capacity: d.capacity, epoch: d.epoch, seq: d.seq,
			alloc: alloc, changed: append([]uint32(nil), d.changed...),
		}
		ids[key] = fmt.Sprintf("%s/%d", d.epoch, d.seq)
	}
	t.snaps[ref] = frozen
	setChangeIds(snap, vm, ids)
}

// setChangeIds writes the changeIds into the snapshot's own copy of the hardware (snapshots.go
// gave it one when it was put; made here if that failed, never writing into the VM's devices).
func setChangeIds(snap *simulator.VirtualMachineSnapshot, vm *mo.VirtualMachine, ids map[int32]string) {
	shared := false
	for _, sd := range snap.Config.Hardware.Device {
		for _, vd := range vm.Config.Hardware.Device {
			if sd == vd {
				shared = true
			}
		}
	}
	if shared {
		var hw types.VirtualHardware
		if err := deepCopy(&snap.Config.Hardware, &hw); err != nil {
			log.Printf("change tracking: snapshot %s: copying the hardware: %v", snap.Self.Value, err)
			return
		}
		snap.Config.Hardware = hw
	}
	for _, d := range snap.Config.Hardware.Device {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		if backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			if id, ok := ids[disk.Key]; ok {
				backing.ChangeId = id
			}
		}
	}
}

// flatDisk is the disk, its extent's local path and capacity when d is a flat disk.
func flatDisk(d types.BaseVirtualDevice) (*types.VirtualDisk, string, int64) {
	disk, ok := d.(*types.VirtualDisk)
	if !ok {
		return nil, "", 0
	}
	backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok || backing.Parent != nil {
		return nil, "", 0
	}
	capacity := disk.CapacityInBytes
	if capacity == 0 {
		capacity = disk.CapacityInKB * 1024
	}
	file := extentFile(backing.FileName)
	if file == "" || capacity <= 0 {
		return nil, "", 0
	}
	return disk, file, capacity
}

// newEpoch is a changeId's UUID part, written as hosts write it.
func newEpoch() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[0] = 0x52
	var out strings.Builder
	for i, x := range b {
		switch {
		case i == 8:
			out.WriteByte('-')
		case i > 0:
			out.WriteByte(' ')
		}
		fmt.Fprintf(&out, "%02x", x)
	}
	return out.String()
}

// digestFile hashes each block of the first capacity bytes of file (past its end: zeroes);
// blocks wholly in holes are not read and count as unallocated.
func (t *changeTracking) digestFile(file string, capacity int64) ([]blockDigest, []bool, fileStamp, error) {
	n := int((capacity + cbtBlock - 1) / cbtBlock)
	digests := make([]blockDigest, n)
	alloc := make([]bool, n)
	for i := range digests {
		digests[i] = t.zero
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, fileStamp{}, err
	}
	defer f.Close()
	hashed := time.Now().UnixNano()
	stamp, err := statFile(file)
	if err != nil {
		return nil, nil, fileStamp{}, err
	}
	stamp.hashed = hashed
	end := stamp.size
	if end > capacity {
		end = capacity
	}
	buf := make([]byte, cbtBlock)
	pos := int64(0)
	for pos < end {
		data, err := f.Seek(pos, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break // only a hole is left
			}
			data = pos // no SEEK_DATA here: everything is data
		}
		if data >= end {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil || hole > end {
			hole = end
		}
		for b := data / cbtBlock; b*cbtBlock < hole; b++ {
			for i := range buf {
				buf[i] = 0
			}
			if _, err := f.ReadAt(buf[:blockLen(b, end)], b*cbtBlock); err != nil && !errors.Is(err, io.EOF) {
				return nil, nil, fileStamp{}, err
			}
			if bytes.Equal(buf, zeroBlock) {
				continue // reads as zeroes: reported as an unwritten (lazy-zeroed) block
			}
			digests[b] = t.digestBlock(buf)
			alloc[b] = true
		}
		pos = ((hole + cbtBlock - 1) / cbtBlock) * cbtBlock
	}
	return digests, alloc, stamp, nil
}

func blockLen(b, end int64) int64 {
	if left := end - b*cbtBlock; left < cbtBlock {
		return left
	}
	return cbtBlock
}

// --------------------------------------------------------------------------- the method

// cbtEndpoint receives one VM's QueryChangedDiskAreas calls (see wrap). The registry's
// objects must start with an embedded mo type (the simulator digs it out by reflection when
// it walks every object, FindByUuid for one); ExtensibleManagedObject is neither an entity
// nor any type a search looks for.
type cbtEndpoint struct {
	mo.ExtensibleManagedObject
	vm types.ManagedObjectReference
	t  *changeTracking
}

func cbtFault(msg string, fault types.BaseMethodFault) soap.HasFault {
	return &methods.QueryChangedDiskAreasBody{Fault_: simulator.Fault(msg, fault)}
}

// QueryChangedDiskAreas is VirtualMachine.QueryChangedDiskAreas of the VM e.vm.
func (e *cbtEndpoint) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	vm, ok := simulator.Map.Get(e.vm).(*simulator.VirtualMachine)
	if !ok {
		return cbtFault("", &types.ManagedObjectNotFound{Obj: e.vm})
	}
	var body soap.HasFault
	simulator.Map.WithLock(vm, func() { body = e.t.query(vm, req) })
	return body
}

func (t *changeTracking) query(vm *simulator.VirtualMachine, req *types.QueryChangedDiskAreas) soap.HasFault {
	devices := vm.Config.Hardware.Device
	if req.Snapshot != nil {
		snap, ok := simulator.Map.Get(*req.Snapshot).(*simulator.VirtualMachineSnapshot)
		if !ok || snap.Vm != vm.Self {
			return cbtFault(fmt.Sprintf("snapshot %s of %s not found", req.Snapshot.Value, vm.Self.Value),
				&types.NotFound{})
		}
		devices = snap.Config.Hardware.Device
	}
	var disk *types.VirtualDisk
	for _, d := range devices {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == req.DeviceKey {
			disk = vd
		}
	}
	if disk == nil {
		return cbtFault(fmt.Sprintf("device %d is not a virtual disk", req.DeviceKey),
			&types.InvalidArgument{InvalidProperty: "deviceKey"})
	}
	_, file, capacity := flatDisk(disk)
	if file == "" {
		return cbtFault(fmt.Sprintf("change tracking is not supported for disk %d", req.DeviceKey),
			&types.InvalidArgument{InvalidProperty: "deviceKey"})
	}
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		return cbtFault(fmt.Sprintf("startOffset %d is beyond the end of the disk (%d bytes)",
			req.StartOffset, capacity), &types.InvalidArgument{InvalidProperty: "startOffset"})
	}
	notTracked := func(why string) soap.HasFault {
		return cbtFault(fmt.Sprintf("cannot query the changed areas of disk %d: %s", req.DeviceKey, why),
			&types.FileFault{File: extentName(disk)})
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	var state *snapDisk
	if req.Snapshot != nil {
		disks := t.snaps[*req.Snapshot]
		state = disks[req.DeviceKey]
		if state == nil {
			return notTracked("change tracking was not active when the snapshot was taken")
		}
	} else {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			return notTracked("without a snapshot, only a powered-off virtual machine can be queried")
		}
		track := t.vms[vm.Self][req.DeviceKey]
		if track == nil {
			return notTracked("change tracking is not active for the disk")
		}
		digests, alloc, _, err := t.digestFile(track.file, track.capacity)
		if err != nil {
			return notTracked(err.Error())
		}
		changed := append([]uint32(nil), track.changed...)
		for i := range digests {
			if digests[i] != track.digests[i] {
				changed[i] = uint32(track.seq + 1)
			}
		}
		state = &snapDisk{file: track.file, capacity: track.capacity, epoch: track.epoch,
			seq: track.seq + 1, alloc: alloc, changed: changed}
	}
	if state.file != file || state.capacity != capacity {
		return notTracked("the disk was replaced since tracking started")
	}

	var flagged func(block int) bool
	if req.ChangeId == "*" {
		flagged = func(b int) bool { return state.alloc[b] }
	} else {
		slash := strings.LastIndex(req.ChangeId, "/")
		since, err := strconv.Atoi(req.ChangeId[slash+1:])
		if slash <= 0 || err != nil || since < 0 {
			return cbtFault(fmt.Sprintf("invalid changeId %q", req.ChangeId),
				&types.InvalidArgument{InvalidProperty: "changeId"})
		}
		if req.ChangeId[:slash] != state.epoch {
			return notTracked(fmt.Sprintf("changeId %q is from before change tracking was (re)enabled", req.ChangeId))
		}
		if since > state.seq {
			return cbtFault(fmt.Sprintf("changeId %q is later than the snapshot's", req.ChangeId),
				&types.InvalidArgument{InvalidProperty: "changeId"})
		}
		flagged = func(b int) bool { return int(state.changed[b]) > since }
	}
	return &methods.QueryChangedDiskAreasBody{Res: &types.QueryChangedDiskAreasResponse{
		Returnval: changedAreas(req.StartOffset, capacity, flagged),
	}}
}

// changedAreas lists the flagged blocks from start on as areas, merged, at most cbtMaxAreas.
func changedAreas(start, capacity int64, flagged func(int) bool) types.DiskChangeInfo {
	info := types.DiskChangeInfo{StartOffset: start, Length: capacity - start}
	blocks := int((capacity + cbtBlock - 1) / cbtBlock)
	for b := int(start / cbtBlock); b < blocks; b++ {
		if !flagged(b) {
			continue
		}
		from := int64(b) * cbtBlock
		if from < start {
			from = start
		}
		to := int64(b+1) * cbtBlock
		if to > capacity {
			to = capacity
		}
		if n := len(info.ChangedArea); n > 0 {
			last := &info.ChangedArea[n-1]
			if last.Start+last.Length == from {
				last.Length = to - last.Start
				continue
			}
			if n == cbtMaxAreas {
				info.Length = from - start // the next call starts here
				break
			}
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: from, Length: to - from})
	}
	return info
}

func extentName(disk *types.VirtualDisk) string {
	if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
		return b.FileName
	}
	return ""
}

// --------------------------------------------------------------------------- routing

var thisElement = regexp.MustCompile(`<((?:[A-Za-z_][\w.-]*:)?_this)\b[^>]*>\s*([^<\s]+)\s*</(?:[A-Za-z_][\w.-]*:)?_this>`)

// wrap routes QueryChangedDiskAreas calls on a VirtualMachine to its cbtEndpoint.
func (t *changeTracking) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Body == nil {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err != nil || !bytes.Contains(body, []byte("QueryChangedDiskAreas")) {
			next.ServeHTTP(w, r)
			return
		}
		method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
		if err != nil || method.Name != "QueryChangedDiskAreas" || method.This.Type != "VirtualMachine" {
			next.ServeHTTP(w, r)
			return
		}
		if _, ok := simulator.Map.Get(method.This).(*simulator.VirtualMachine); !ok {
			next.ServeHTTP(w, r) // the simulator answers ManagedObjectNotFound
			return
		}
		endpoint := types.ManagedObjectReference{Type: cbtEndpointType, Value: method.This.Value}
		t.mu.Lock()
		if simulator.Map.Get(endpoint) == nil {
			simulator.Map.Put(&cbtEndpoint{
				ExtensibleManagedObject: mo.ExtensibleManagedObject{Self: endpoint},
				vm:                      method.This,
				t:                       t,
			})
		}
		t.mu.Unlock()
		replaced := false
		body = thisElement.ReplaceAllFunc(body, func(m []byte) []byte {
			sub := thisElement.FindSubmatch(m)
			if replaced || string(sub[2]) != method.This.Value {
				return m
			}
			replaced = true
			return []byte(fmt.Sprintf(`<%s type="%s">%s</%s>`, sub[1], cbtEndpointType, method.This.Value, sub[1]))
		})
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Set("Content-Length", strconv.Itoa(len(body)))
		// A fault may name _this (NotAuthenticated.object, for one): the client must see the
		// VM it called, not the endpoint, whose moref value is the VM's.
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		out := bytes.ReplaceAll(rec.Body.Bytes(), []byte(`type="`+cbtEndpointType+`"`), []byte(`type="VirtualMachine"`))
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(out)
	})
}
