// A failed cluster host, re-registering its VMs elsewhere, and VM memory overhead, on top of
// govmomi 0.24.2's simulator (vmctl's recovery of a failed host and its evacuation plans).
//
// The simulator has no DisconnectHost_Task, ReconnectHost_Task or ShutdownHost_Task, keeps no
// .vmx contents (RegisterVM_Task makes a VM with default hardware and a new identity), lets
// no VM of an unreachable host leave the inventory, and reports no memory overhead. This file
// adds them as vSphere documents them, without changing the library:
//
//   - HostSystem.DisconnectHost_Task: runtime.connectionState "disconnected"; the host's VMs
//     keep running there, vCenter just stops managing them: their runtime.connectionState is
//     "disconnected", their power state the last one known.
//   - HostSystem.ShutdownHost_Task(force): refused (InvalidState) for a host not in
//     maintenance mode unless force. The host goes down with whatever ran on it: vCenter sees it
//     "notResponding", runtime.powerState "poweredOff" (HostSystemPowerState: "specifically
//     powered off by the user through VirtualCenter"); its VMs "disconnected", power state the
//     last one known (vCenter cannot see them stop). This is the test's failed host.
//   - HostSystem.ReconnectHost_Task: "connected" again, its VMs too; HostConnectFault for a host
//     that was shut down (nothing answers).
//   - VirtualMachine.UnregisterVM of a VM whose host is not connected: vCenter drops it from the
//     inventory ("Remove from Inventory", the documented way for such VMs) whatever the last
//     power state known (the simulator refuses a poweredOn one).
//   - the .vmx: UnregisterVM keeps the VM's configuration by its vmPathName, as the .vmx file on
//     the datastore keeps it; RegisterVM_Task of that path gives the new VM that configuration
//     back (hardware with its disks, CPUs, memory, guest, extraConfig, BIOS uuid and the
//     instance uuid that vCenter keeps in the .vmx as vc.uuid).
//   - Datastore.host names every host that mounts it (the simulator names the last one only).
//   - config.initialOverhead.initialMemoryReservation ("memory overhead required for virtual
//     machine to be powered on", bytes) for every VM, set when it is made, registered, cloned or
//     reconfigured, from VMware's table "Overhead Memory on Virtual Machines" (vSphere Resource
//     Management): 20.29 MB for 1 vCPU and 256 MB, 25.90 for 1 and 1024, 48.64 for 1 and 4096,
//     139.62 for 1 and 16384, 4 MB more per vCPU; fitted as 14.41 + 3.98 x vCPUs + 0.0074 x MB.
//
// The three host methods are answered here, in front of the SDK endpoint (the simulator's
// dispatcher finds no such method on its HostSystem), after the caller's session is checked
// with the simulator in-process (a call without one goes on to the simulator, which answers
// NotAuthenticated). Their tasks are the simulator's own (CreateTask), so WaitForUpdatesEx and
// the task properties behave as for any other task.
package main

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// savedVMX is what a VM's .vmx keeps while it is out of the inventory.
type savedVMX struct {
	name         string
	instanceUUID string
	biosUUID     string
	guestID      string
	hardware     types.VirtualHardware
	extraConfig  []types.BaseOptionValue
}

// hostFailure implements simulator.RegisterObject and wraps the SDK handler (see the file).
type hostFailure struct {
	probe string // a SessionManager.currentSession read, to check a caller's session

	mu  sync.Mutex
	vmx map[string]savedVMX // by the .vmx's datastore path
}

func newHostFailure(pc, sm types.ManagedObjectReference) *hostFailure {
	probe := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<RetrievePropertiesEx xmlns="urn:vim25"><_this type="%s">%s</_this><specSet>
<propSet><type>SessionManager</type><pathSet>currentSession</pathSet></propSet>
<objectSet><obj type="%s">%s</obj></objectSet></specSet><options></options></RetrievePropertiesEx>
</soapenv:Body></soapenv:Envelope>`, pc.Type, pc.Value, sm.Type, sm.Value)
	return &hostFailure{probe: probe, vmx: make(map[string]savedVMX)}
}

// Reference is the handler's key in the registry's handler map; no object has this type.
func (h *hostFailure) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmctlHostFailure", Value: "vmctl-host-failure"}
}

// --------------------------------------------------------------------------- SOAP calls

func (h *hostFailure) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Body == nil || strings.HasPrefix(r.URL.Path, "/folder/") {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err != nil || !(bytes.Contains(body, []byte("Host_Task")) ||
			bytes.Contains(body, []byte("UnregisterVM"))) {
			next.ServeHTTP(w, r)
			return
		}
		method, err := simulator.UnmarshalBody(types.TypeFunc(), body)
		if err != nil {
			next.ServeHTTP(w, r) // the simulator answers the fault
			return
		}
		switch req := method.Body.(type) {
		case *types.DisconnectHost_Task:
			h.hostTask(w, r, next, method.This, "DisconnectHost_Task", "disconnect", h.disconnect)
		case *types.ReconnectHost_Task:
			h.hostTask(w, r, next, method.This, "ReconnectHost_Task", "reconnect", h.reconnect)
		case *types.ShutdownHost_Task:
			force := req.Force
			h.hostTask(w, r, next, method.This, "ShutdownHost_Task", "shutdown",
				func(host *simulator.HostSystem) types.BaseMethodFault { return h.shutdown(host, force) })
		case *types.UnregisterVM:
			if h.authenticated(r, next) {
				h.unregistering(method.This)
			}
			next.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// authenticated asks the simulator whether the request's cookies name a live session.
func (h *hostFailure) authenticated(r *http.Request, next http.Handler) bool {
	check, _ := http.NewRequest(http.MethodPost, r.URL.Path, strings.NewReader(h.probe))
	check.Header.Set("Content-Type", "text/xml; charset=utf-8")
	check.Header.Set("SOAPAction", "urn:vim25/6.7")
	for _, c := range r.Cookies() {
		check.AddCookie(c)
	}
	check.RemoteAddr = r.RemoteAddr
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, check)
	return rec.Code == http.StatusOK && bytes.Contains(rec.Body.Bytes(), []byte("<name>currentSession</name>"))
}

// hostTask runs one of the added HostSystem methods as a simulator task and answers its moref.
func (h *hostFailure) hostTask(w http.ResponseWriter, r *http.Request, next http.Handler,
	this types.ManagedObjectReference, method, name string,
	run func(*simulator.HostSystem) types.BaseMethodFault) {
	host, ok := simulator.Map.Get(this).(*simulator.HostSystem)
	if !ok || !h.authenticated(r, next) {
		next.ServeHTTP(w, r) // NotAuthenticated, ManagedObjectNotFound or MethodNotFound
		return
	}
	var ref types.ManagedObjectReference
	simulator.Map.WithLock(host, func() {
		task := simulator.CreateTask(host, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
			return nil, run(host)
		})
		ref = task.Run()
	})
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><%sResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></%sResponse></soapenv:Body></soapenv:Envelope>`,
		method, ref.Value, method)
}

func (h *hostFailure) disconnect(host *simulator.HostSystem) types.BaseMethodFault {
	setHostState(host, types.HostSystemConnectionStateDisconnected, host.Runtime.PowerState)
	return nil
}

func (h *hostFailure) reconnect(host *simulator.HostSystem) types.BaseMethodFault {
	if host.Runtime.PowerState == types.HostSystemPowerStatePoweredOff {
		return &types.HostConnectFault{} // shut down: nothing answers
	}
	setHostState(host, types.HostSystemConnectionStateConnected, types.HostSystemPowerStatePoweredOn)
	return nil
}

func (h *hostFailure) shutdown(host *simulator.HostSystem, force bool) types.BaseMethodFault {
	if !force && !host.Runtime.InMaintenanceMode {
		return &types.InvalidState{}
	}
	setHostState(host, types.HostSystemConnectionStateNotResponding, types.HostSystemPowerStatePoweredOff)
	log.Printf("host %s (%s) shut down: it does not respond", host.Name, host.Self.Value)
	return nil
}

// setHostState sets a host's connection and power state and its VMs' connection state.
func setHostState(host *simulator.HostSystem, c types.HostSystemConnectionState, p types.HostSystemPowerState) {
	simulator.Map.Update(host, []types.PropertyChange{
		{Name: "runtime.connectionState", Val: c},
		{Name: "runtime.powerState", Val: p},
	})
	vmState := types.VirtualMachineConnectionStateConnected
	if c != types.HostSystemConnectionStateConnected {
		vmState = types.VirtualMachineConnectionStateDisconnected
	}
	// Every VM the host runs, by runtime.host: the simulator's RelocateVM does not keep
	// host.Vm up to date, and a VM migrated onto the host fails with it too.
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok || vm.Runtime.Host == nil || *vm.Runtime.Host != host.Self {
			continue
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.connectionState", Val: vmState},
			{Name: "summary.runtime.connectionState", Val: vmState},
		})
	}
}

// unregistering keeps the VM's .vmx contents and lets a VM of a host that is not connected
// leave the inventory whatever its last known power state (before the simulator's UnregisterVM).
func (h *hostFailure) unregistering(ref types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil || vm.Runtime.Host == nil {
		return
	}
	simulator.Map.WithLock(vm, func() {
		saved := savedVMX{
			name:         vm.Name,
			instanceUUID: vm.Config.InstanceUuid,
			biosUUID:     vm.Config.Uuid,
			guestID:      vm.Config.GuestId,
			hardware:     vm.Config.Hardware,
			extraConfig:  vm.Config.ExtraConfig,
		}
		saved.hardware.Device = append([]types.BaseVirtualDevice(nil), vm.Config.Hardware.Device...)
		h.mu.Lock()
		h.vmx[vm.Config.Files.VmPathName] = saved
		h.mu.Unlock()
		host, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem)
		if ok && host.Runtime.ConnectionState != types.HostSystemConnectionStateConnected {
			vm.Runtime.PowerState = types.VirtualMachinePowerStatePoweredOff
		}
	})
}

// --------------------------------------------------------------------------- registry hooks

func (h *hostFailure) PutObject(mo.Reference) {}

func (h *hostFailure) RemoveObject(types.ManagedObjectReference) {}

// UpdateObject sees tasks end: a registered VM gets its .vmx back; a VM made, registered,
// cloned or reconfigured gets its memory overhead.
func (h *hostFailure) UpdateObject(item mo.Reference, changes []types.PropertyChange) {
	task, ok := item.(*mo.Task)
	if !ok || task.Info.State != types.TaskInfoStateSuccess || !hasChange(changes, "info.state") {
		return
	}
	id := task.Info.DescriptionId
	var ref types.ManagedObjectReference
	switch {
	case strings.HasSuffix(id, ".registerVm"), strings.HasSuffix(id, ".createVm"),
		strings.HasSuffix(id, ".cloneVm"):
		r, ok := task.Info.Result.(types.ManagedObjectReference)
		if !ok {
			return
		}
		ref = r
	case id == "VirtualMachine.reconfigVm" && task.Info.Entity != nil:
		ref = *task.Info.Entity
	default:
		return
	}
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	if strings.HasSuffix(id, ".registerVm") {
		h.restoreVMX(vm)
	}
	setOverhead(vm)
}

func hasChange(changes []types.PropertyChange, name string) bool {
	for _, c := range changes {
		if c.Name == name {
			return true
		}
	}
	return false
}

// restoreVMX gives a VM just registered the configuration its .vmx kept.
func (h *hostFailure) restoreVMX(vm *simulator.VirtualMachine) {
	h.mu.Lock()
	saved, ok := h.vmx[vm.Config.Files.VmPathName]
	delete(h.vmx, vm.Config.Files.VmPathName)
	h.mu.Unlock()
	if !ok {
		return
	}
	simulator.Map.Update(vm, []types.PropertyChange{
		{Name: "config.instanceUuid", Val: saved.instanceUUID},
		{Name: "config.uuid", Val: saved.biosUUID},
		{Name: "config.guestId", Val: saved.guestID},
		{Name: "config.hardware", Val: saved.hardware},
		{Name: "config.extraConfig", Val: saved.extraConfig},
		{Name: "summary.config.instanceUuid", Val: saved.instanceUUID},
		{Name: "summary.config.uuid", Val: saved.biosUUID},
		{Name: "summary.config.guestId", Val: saved.guestID},
		{Name: "summary.config.numCpu", Val: saved.hardware.NumCPU},
		{Name: "summary.config.memorySizeMB", Val: saved.hardware.MemoryMB},
	})
	sizeDisks(vm.Config.Hardware.Device) // disks.go
	log.Printf("registered %s (%s) with its .vmx configuration", vm.Config.Files.VmPathName, vm.Self.Value)
}

// overheadBytes is the memory overhead of a VM with cpus vCPUs and mb MB of memory (see the file).
func overheadBytes(cpus, mb int32) int64 {
	if cpus < 1 {
		cpus = 1
	}
	mib := 14.41 + 3.98*float64(cpus) + 0.0074*float64(mb)
	return int64(math.Round(mib * 1024 * 1024))
}

func setOverhead(vm *simulator.VirtualMachine) {
	want := overheadBytes(vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB)
	if o := vm.Config.InitialOverhead; o != nil && o.InitialMemoryReservation == want {
		return
	}
	simulator.Map.Update(vm, []types.PropertyChange{{
		Name: "config.initialOverhead",
		Val:  &types.VirtualMachineConfigInfoOverheadInfo{InitialMemoryReservation: want},
	}})
}

// fixDatastoreMounts lists every host that mounts a datastore in its host property. The
// simulator makes one Datastore object per datastore folder for the same-named datastore of
// every host of a datacenter, each host's HostDatastoreSystem replacing the last one's, so
// Datastore.host names the last host only while every host's HostSystem.datastore names it.
func fixDatastoreMounts() {
	mounts := map[types.ManagedObjectReference][]types.DatastoreHostMount{}
	for _, e := range simulator.Map.All("HostSystem") {
		host, ok := e.(*simulator.HostSystem)
		if !ok {
			continue
		}
		for _, ds := range host.Datastore {
			mounts[ds] = append(mounts[ds], types.DatastoreHostMount{
				Key: host.Self,
				MountInfo: types.HostMountInfo{
					AccessMode: string(types.HostMountModeReadWrite),
					Mounted:    types.NewBool(true),
					Accessible: types.NewBool(true),
				},
			})
		}
	}
	for ref, list := range mounts {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok && len(list) > len(ds.Host) {
			simulator.Map.Update(ds, []types.PropertyChange{{Name: "host", Val: list}})
		}
	}
}

// start fixes the model once it is made (see the file): datastore mounts, VM overheads.
func (h *hostFailure) start() {
	fixDatastoreMounts()
	setAllOverheads()
}

// setAllOverheads sets the overhead of the model's VMs (at start).
func setAllOverheads() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok && vm.Config != nil {
			setOverhead(vm)
		}
	}
}
