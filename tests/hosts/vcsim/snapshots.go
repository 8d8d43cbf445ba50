// Snapshot revert as real vSphere does it, on top of govmomi 0.24.2's simulator.
//
// The simulator's RevertToSnapshot_Task only moves snapshot.currentSnapshot and its
// RevertToCurrentSnapshot_Task does nothing at all. Real vSphere restores the virtual machine's
// configuration as it was when the snapshot was taken, and its power state: a snapshot taken
// with memory of a powered-on VM comes back poweredOn, one taken without memory poweredOff
// (CreateSnapshot_Task: "When set to FALSE, the power state of the snapshot is set to powered
// off"; the simulator records the VM's power state whatever `memory` says).
//
// This file changes none of the library. It works through the simulator's own extension points:
//
//   - an http.Handler in front of the SDK endpoint reads the arguments the simulator's methods
//     drop (CreateSnapshot_Task.memory, RevertTo*Snapshot_Task.suppressPowerOn) and hands them
//     to the hooks below for the duration of that one call;
//   - a simulator.RegisterObject handler (Map.AddHandler, as PropertyCollectors use it) sees
//     every object put into and updated in the registry:
//   - a VirtualMachineSnapshot being put: keep its own deep copy of the VM's hardware (the
//     simulator's snapshot shares the device list with the VM) and the snapshot's power state;
//   - the VM's currentSnapshot moving to the snapshot just created: correct the snapshot
//     tree's state to poweredOff for a snapshot taken without memory;
//   - a revert task entering "running": restore the VM's hardware (CPUs, cores per socket,
//     memory, devices) and CPU/memory allocation, then its power state, all through
//     Map.Update so PropertyCollectors and WaitForUpdatesEx see the changes, and post the
//     power events a power operation posts. Tasks run synchronously inside the SOAP call,
//     so all of this is done before the task reports success.
package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// The descriptionId of the simulator's revert tasks (CreateTask(entity, name, ...)).
const (
	revertToSnapshotTask        = "VirtualMachineSnapshot.revertToSnapshot"
	revertToCurrentSnapshotTask = "VirtualMachine.revertSnapshot"
)

// callArgs are the arguments of one snapshot call the simulator does not keep.
type callArgs struct {
	method          string
	memory          bool // CreateSnapshot_Task
	suppressPowerOn bool // RevertToSnapshot_Task, RevertToCurrentSnapshot_Task
}

// snapState is what the simulator does not record about a snapshot.
type snapState struct {
	vm    types.ManagedObjectReference
	power types.VirtualMachinePowerState // poweredOff for a snapshot taken without memory
	fresh bool                           // put by CreateSnapshot, not yet made current
}

// revertJob is a revert task that has been created and has not finished.
type revertJob struct {
	target          types.ManagedObjectReference // the snapshot, or the VM (revert to current)
	toCurrent       bool                         // RevertToCurrentSnapshot: the VM is locked already
	suppressPowerOn bool
}

// snapshotFidelity implements simulator.RegisterObject.
type snapshotFidelity struct {
	username string // the only user who can log in: the user named in the events

	mu      sync.Mutex
	snaps   map[types.ManagedObjectReference]*snapState
	jobs    map[types.ManagedObjectReference]revertJob // by task
	pending map[types.ManagedObjectReference]callArgs  // by the call's _this
	calls   map[types.ManagedObjectReference]*sync.Mutex
}

func newSnapshotFidelity(username string) *snapshotFidelity {
	return &snapshotFidelity{
		username: username,
		snaps:    make(map[types.ManagedObjectReference]*snapState),
		jobs:     make(map[types.ManagedObjectReference]revertJob),
		pending:  make(map[types.ManagedObjectReference]callArgs),
		calls:    make(map[types.ManagedObjectReference]*sync.Mutex),
	}
}

// Reference is the handler's key in the registry's handler map; no object has this type.
func (f *snapshotFidelity) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmctlSnapshotFidelity", Value: "vmctl-snapshot-fidelity"}
}

// --------------------------------------------------------------------------- SOAP arguments

// wrap returns next with the snapshot calls' dropped arguments captured first.
func (f *snapshotFidelity) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Body == nil {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err != nil || !bytes.Contains(body, []byte("Snapshot")) {
			next.ServeHTTP(w, r)
			return
		}
		method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
		if err != nil {
			next.ServeHTTP(w, r) // the simulator answers the fault
			return
		}
		var args callArgs
		switch req := method.Body.(type) {
		case *types.CreateSnapshot_Task:
			args = callArgs{method: method.Name, memory: req.Memory}
		case *types.RevertToSnapshot_Task:
			args = callArgs{method: method.Name, suppressPowerOn: isTrue(req.SuppressPowerOn)}
		case *types.RevertToCurrentSnapshot_Task:
			args = callArgs{method: method.Name, suppressPowerOn: isTrue(req.SuppressPowerOn)}
		default:
			next.ServeHTTP(w, r)
			return
		}
		// The simulator serialises calls on one object anyway (Map.WithLock on _this); doing it
		// here as well keeps concurrent calls from seeing each other's arguments.
		lock := f.callLock(method.This)
		lock.Lock()
		defer lock.Unlock()
		f.mu.Lock()
		f.pending[method.This] = args
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			delete(f.pending, method.This)
			f.mu.Unlock()
		}()
		next.ServeHTTP(w, r)
	})
}

func isTrue(b *bool) bool { return b != nil && *b }

func (f *snapshotFidelity) callLock(ref types.ManagedObjectReference) *sync.Mutex {
	f.mu.Lock()
	defer f.mu.Unlock()
	lock, ok := f.calls[ref]
	if !ok {
		lock = new(sync.Mutex)
		f.calls[ref] = lock
	}
	return lock
}

// --------------------------------------------------------------------------- registry hooks

// PutObject is called for every object put into the registry.
func (f *snapshotFidelity) PutObject(item mo.Reference) {
	switch obj := item.(type) {
	case *simulator.VirtualMachineSnapshot:
		f.snapshotPut(obj)
	case *simulator.Task:
		f.taskPut(obj)
	}
}

// UpdateObject is called for every Map.Update, with the object's embedded mo type.
func (f *snapshotFidelity) UpdateObject(item mo.Reference, changes []types.PropertyChange) {
	switch obj := item.(type) {
	case *mo.Task:
		f.taskUpdate(obj.Self, changes)
	case *mo.VirtualMachine:
		f.vmUpdate(obj.Self, changes)
	}
}

// RemoveObject forgets removed snapshots.
func (f *snapshotFidelity) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type != "VirtualMachineSnapshot" {
		return
	}
	f.mu.Lock()
	delete(f.snaps, ref)
	delete(f.calls, ref)
	f.mu.Unlock()
}

// snapshotPut runs inside CreateSnapshot_Task, with the VM locked by the dispatcher.
func (f *snapshotFidelity) snapshotPut(snap *simulator.VirtualMachineSnapshot) {
	vm, ok := simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	// The simulator copies vm.Config by value, so the snapshot shares the VM's device list
	// (and the devices) and would follow later reconfigurations: give it its own copy.
	var hw types.VirtualHardware
	if err := deepCopy(&snap.Config.Hardware, &hw); err != nil {
		log.Printf("snapshot %s: copying the hardware: %v", snap.Self.Value, err)
		return
	}
	snap.Config.Hardware = hw
	snap.Config.CpuAllocation = copyAllocation(snap.Config.CpuAllocation)
	snap.Config.MemoryAllocation = copyAllocation(snap.Config.MemoryAllocation)

	f.mu.Lock()
	defer f.mu.Unlock()
	memory := true // a caller that bypassed the SOAP endpoint: the simulator's behaviour
	if args, ok := f.pending[snap.Vm]; ok && args.method == "CreateSnapshot_Task" {
		memory = args.memory
	}
	power := vm.Runtime.PowerState
	// "For a virtual machine in suspended state we always include memory."
	if power == types.VirtualMachinePowerStatePoweredOn && !memory {
		power = types.VirtualMachinePowerStatePoweredOff
	}
	f.snaps[snap.Self] = &snapState{vm: snap.Vm, power: power, fresh: true}
}

// vmUpdate corrects the tree's state of a snapshot just taken without memory. It runs inside
// CreateSnapshot_Task's Map.Update (VM locked by the dispatcher).
func (f *snapshotFidelity) vmUpdate(ref types.ManagedObjectReference, changes []types.PropertyChange) {
	var current *types.ManagedObjectReference
	for _, c := range changes {
		if c.Name != "snapshot.currentSnapshot" {
			continue
		}
		switch v := c.Val.(type) {
		case types.ManagedObjectReference:
			current = &v
		case *types.ManagedObjectReference:
			current = v
		}
	}
	if current == nil {
		return
	}
	f.mu.Lock()
	state, ok := f.snaps[*current]
	fresh := ok && state.fresh
	if fresh {
		state.fresh = false
	}
	f.mu.Unlock()
	if !fresh {
		return
	}
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok || vm.Snapshot == nil {
		return
	}
	tree := copyTree(vm.Snapshot.RootSnapshotList)
	item := findTree(tree, *current)
	if item == nil || item.State == state.power {
		return
	}
	item.State = state.power
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "snapshot.rootSnapshotList", Val: tree}})
}

// taskPut notes the revert tasks, with the arguments of the call that created them.
func (f *snapshotFidelity) taskPut(task *simulator.Task) {
	id := task.Info.DescriptionId
	if (id != revertToSnapshotTask && id != revertToCurrentSnapshotTask) || task.Info.Entity == nil {
		return
	}
	target := *task.Info.Entity
	f.mu.Lock()
	defer f.mu.Unlock()
	job := revertJob{target: target, toCurrent: id == revertToCurrentSnapshotTask}
	if args, ok := f.pending[target]; ok {
		job.suppressPowerOn = args.suppressPowerOn
	}
	f.jobs[task.Self] = job
}

// taskUpdate runs the revert when its task starts running (Task.Run, inside the SOAP call).
func (f *snapshotFidelity) taskUpdate(ref types.ManagedObjectReference, changes []types.PropertyChange) {
	f.mu.Lock()
	job, ok := f.jobs[ref]
	f.mu.Unlock()
	if !ok {
		return
	}
	for _, c := range changes {
		if c.Name != "info.state" {
			continue
		}
		state, _ := c.Val.(types.TaskInfoState)
		switch state {
		case types.TaskInfoStateRunning:
			f.revert(job)
		case types.TaskInfoStateSuccess, types.TaskInfoStateError:
			f.mu.Lock()
			delete(f.jobs, ref)
			f.mu.Unlock()
		}
	}
}

// --------------------------------------------------------------------------- revert

func (f *snapshotFidelity) revert(job revertJob) {
	var vm *simulator.VirtualMachine
	var snapRef types.ManagedObjectReference
	if job.toCurrent {
		vm, _ = simulator.Map.Get(job.target).(*simulator.VirtualMachine)
		if vm == nil || vm.Snapshot == nil || vm.Snapshot.CurrentSnapshot == nil {
			return
		}
		snapRef = *vm.Snapshot.CurrentSnapshot
	} else {
		snap, _ := simulator.Map.Get(job.target).(*simulator.VirtualMachineSnapshot)
		if snap == nil {
			return
		}
		vm, _ = simulator.Map.Get(snap.Vm).(*simulator.VirtualMachine)
		if vm == nil {
			return
		}
		snapRef = job.target
	}
	restore := func() { f.restore(vm, snapRef, job.suppressPowerOn) }
	if job.toCurrent {
		restore() // the dispatcher holds the VM's lock: RevertToCurrentSnapshot is its method
	} else {
		simulator.Map.WithLock(vm, restore) // the dispatcher holds the snapshot's lock
	}
}

func (f *snapshotFidelity) restore(
	vm *simulator.VirtualMachine, snapRef types.ManagedObjectReference, suppressPowerOn bool,
) {
	snap, _ := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	f.mu.Lock()
	state := f.snaps[snapRef]
	f.mu.Unlock()
	if snap == nil || state == nil {
		log.Printf("revert of %s to %s: the snapshot's state is unknown", vm.Self.Value, snapRef.Value)
		return
	}
	var hw types.VirtualHardware
	if err := deepCopy(&snap.Config.Hardware, &hw); err != nil {
		log.Printf("revert of %s to %s: copying the hardware: %v", vm.Self.Value, snapRef.Value, err)
		return
	}
	var nics, disks int32
	for _, device := range hw.Device {
		switch device.(type) {
		case types.BaseVirtualEthernetCard:
			nics++
		case *types.VirtualDisk:
			disks++
		}
	}
	changes := []types.PropertyChange{
		{Name: "config.hardware.numCPU", Val: hw.NumCPU},
		{Name: "config.hardware.numCoresPerSocket", Val: hw.NumCoresPerSocket},
		{Name: "config.hardware.memoryMB", Val: hw.MemoryMB},
		{Name: "config.hardware.device", Val: hw.Device},
		{Name: "summary.config.numCpu", Val: hw.NumCPU},
		{Name: "summary.config.memorySizeMB", Val: hw.MemoryMB},
		{Name: "summary.config.numEthernetCards", Val: nics},
		{Name: "summary.config.numVirtualDisks", Val: disks},
	}
	if a := copyAllocation(snap.Config.CpuAllocation); a != nil {
		changes = append(changes, types.PropertyChange{Name: "config.cpuAllocation", Val: a})
	}
	if a := copyAllocation(snap.Config.MemoryAllocation); a != nil {
		changes = append(changes, types.PropertyChange{Name: "config.memoryAllocation", Val: a})
	}
	simulator.Map.Update(vm, changes)

	power := state.power
	if power == types.VirtualMachinePowerStatePoweredOn && suppressPowerOn {
		// "the virtual machine will not be powered on": its memory image is kept, as a
		// suspended VM (the vSphere Client's "Suspend this virtual machine when reverting").
		power = types.VirtualMachinePowerStateSuspended
	}
	if power != vm.Runtime.PowerState {
		f.setPower(vm, power)
	}
}

// setPower changes the power state as the simulator's power operations do, with their events.
func (f *snapshotFidelity) setPower(vm *simulator.VirtualMachine, power types.VirtualMachinePowerState) {
	var boot interface{}
	if power == types.VirtualMachinePowerStatePoweredOn {
		boot = time.Now()
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "runtime.powerState", Val: power},
		{Name: "summary.runtime.powerState", Val: power},
		{Name: "summary.runtime.bootTime", Val: boot},
	})

	event, ok := vmEvent(vm)
	if !ok {
		return
	}
	var events []types.BaseEvent
	switch power {
	case types.VirtualMachinePowerStatePoweredOn:
		events = []types.BaseEvent{&types.VmStartingEvent{VmEvent: event}, &types.VmPoweredOnEvent{VmEvent: event}}
	case types.VirtualMachinePowerStatePoweredOff:
		events = []types.BaseEvent{&types.VmStoppingEvent{VmEvent: event}, &types.VmPoweredOffEvent{VmEvent: event}}
	case types.VirtualMachinePowerStateSuspended:
		events = []types.BaseEvent{&types.VmSuspendingEvent{VmEvent: event}, &types.VmSuspendedEvent{VmEvent: event}}
	}
	ctx := &simulator.Context{
		Context: context.Background(),
		Session: &simulator.Session{UserSession: types.UserSession{UserName: f.username}},
		Map:     simulator.Map,
	}
	em := simulator.Map.EventManager()
	simulator.Map.WithLock(em, func() {
		for _, e := range events {
			em.PostEvent(ctx, &types.PostEvent{EventToPost: e})
		}
	})
}

// vmEvent is the simulator's VirtualMachine.event(): the VM, its host, compute resource and
// datacenter.
func vmEvent(vm *simulator.VirtualMachine) (types.VmEvent, bool) {
	if vm.Runtime.Host == nil {
		return types.VmEvent{}, false
	}
	host, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem)
	if !ok || host.Parent == nil {
		return types.VmEvent{}, false
	}
	event := types.VmEvent{Event: types.Event{
		Host: &types.HostEventArgument{
			EntityEventArgument: types.EntityEventArgument{Name: host.Name},
			Host:                host.Self,
		},
		Vm: &types.VmEventArgument{
			EntityEventArgument: types.EntityEventArgument{Name: vm.Name},
			Vm:                  vm.Self,
		},
	}}
	if parent, ok := simulator.Map.Get(*host.Parent).(mo.Entity); ok {
		event.ComputeResource = &types.ComputeResourceEventArgument{
			EntityEventArgument: types.EntityEventArgument{Name: parent.Entity().Name},
			ComputeResource:     parent.Reference(),
		}
	}
	var cur mo.Entity = host
	for cur != nil && cur.Entity().Parent != nil {
		next, ok := simulator.Map.Get(*cur.Entity().Parent).(mo.Entity)
		if !ok {
			break
		}
		if next.Reference().Type == "Datacenter" {
			event.Datacenter = &types.DatacenterEventArgument{
				EntityEventArgument: types.EntityEventArgument{Name: next.Entity().Name},
				Datacenter:          next.Reference(),
			}
			break
		}
		cur = next
	}
	return event, true
}

// --------------------------------------------------------------------------- copies

// deepCopy copies src into dst through the vim25 XML encoding, as the simulator's own
// deepCopy does (interface values such as devices keep their xsi:type).
func deepCopy(src, dst interface{}) error {
	b, err := xml.Marshal(src)
	if err != nil {
		return err
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	dec.TypeFunc = types.TypeFunc()
	return dec.Decode(dst)
}

func copyAllocation(a *types.ResourceAllocationInfo) *types.ResourceAllocationInfo {
	if a == nil {
		return nil
	}
	var out types.ResourceAllocationInfo
	if err := deepCopy(a, &out); err != nil {
		return nil
	}
	return &out
}

func copyTree(tree []types.VirtualMachineSnapshotTree) []types.VirtualMachineSnapshotTree {
	if tree == nil {
		return nil
	}
	out := make([]types.VirtualMachineSnapshotTree, len(tree))
	for i := range tree {
		out[i] = tree[i]
		out[i].ChildSnapshotList = copyTree(tree[i].ChildSnapshotList)
	}
	return out
}

func findTree(
	tree []types.VirtualMachineSnapshotTree, ref types.ManagedObjectReference,
) *types.VirtualMachineSnapshotTree {
	for i := range tree {
		if tree[i].Snapshot == ref {
			return &tree[i]
		}
		if found := findTree(tree[i].ChildSnapshotList, ref); found != nil {
			return found
		}
	}
	return nil
}
