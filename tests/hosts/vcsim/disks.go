// Disk extents of the size real vSphere gives them, on top of govmomi 0.24.2's simulator.
//
// A flat virtual disk on a VMFS or NFS datastore is two files: the descriptor (NAME.vmdk) and
// the extent holding the data (NAME-flat.vmdk), whose size is the disk's capacity; a thin disk's
// extent is a sparse file of that size (the blocks never written read as zeroes). Downloading the
// extent through the datastore's HTTP access (/folder/PATH?dcPath=&dsName=) gives capacity bytes.
// The simulator creates both files empty, so a download of a new disk's extent gives 0 bytes and
// a ranged read past 0 fails.
//
// This file changes none of the library. A simulator.RegisterObject handler (Map.AddHandler)
// sees every change of a VM's config.hardware.device and grows the extent file of each flat disk
// (VirtualDiskFlatVer2BackingInfo) to the disk's capacity with a sparse truncate; the VMs the
// model made before the handler existed are done once at start (sizeAllDisks). Extents are only
// ever grown, never cut: content written through /folder stays. What the simulator still does
// not do: delta disks for snapshots (a snapshot's disks are the VM's base disks), changed-block
// tracking, and guest writes (no guest runs).
//
// The simulator's /folder handler serves anyone; a real host serves only a client with a valid
// session (the vmware_soap_session cookie the SOAP API's Login set) and answers 401 otherwise.
// folderGuard puts that check in front: it asks the simulator itself, in-process, whether the
// request's cookie names a live session (RetrievePropertiesEx of SessionManager.currentSession
// with that cookie), so expiry and Logout count exactly as they do for SOAP calls.
package main

import (
	"bytes"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type diskExtents struct{}

// Reference is the handler's key in the registry's handler map; no object has this type.
func (diskExtents) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmctlDiskExtents", Value: "vmctl-disk-extents"}
}

func (diskExtents) PutObject(item mo.Reference) {
	if vm, ok := item.(*simulator.VirtualMachine); ok && vm.Config != nil {
		sizeDisks(vm.Config.Hardware.Device)
	}
}

func (diskExtents) UpdateObject(item mo.Reference, changes []types.PropertyChange) {
	if _, ok := item.(*mo.VirtualMachine); !ok {
		return
	}
	for _, change := range changes {
		if change.Name != "config.hardware.device" {
			continue
		}
		switch devices := change.Val.(type) {
		case []types.BaseVirtualDevice:
			sizeDisks(devices)
		case *types.ArrayOfVirtualDevice: // as Map.Update wraps slices
			sizeDisks(devices.VirtualDevice)
		case types.ArrayOfVirtualDevice:
			sizeDisks(devices.VirtualDevice)
		}
	}
}

func (diskExtents) RemoveObject(types.ManagedObjectReference) {}

// sizeAllDisks grows the extents of the disks of every VM in the registry.
func sizeAllDisks() {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok && vm.Config != nil {
			sizeDisks(vm.Config.Hardware.Device)
		}
	}
}

func sizeDisks(devices []types.BaseVirtualDevice) {
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok || backing.Parent != nil {
			continue
		}
		capacity := disk.CapacityInBytes
		if capacity == 0 {
			capacity = disk.CapacityInKB * 1024
		}
		local := extentFile(backing.FileName)
		if local == "" || capacity <= 0 {
			continue
		}
		info, err := os.Stat(local)
		if err != nil || info.Size() >= capacity {
			continue // not created (yet), or already as large
		}
		if err := os.Truncate(local, capacity); err != nil {
			log.Printf("disk extents: cannot size %s to %d bytes: %v", local, capacity, err)
		}
	}
}

// extentFile is the local path of the flat extent of the descriptor "[ds] dir/NAME.vmdk".
func extentFile(descriptor string) string {
	var p object.DatastorePath
	if !p.FromString(descriptor) || !strings.HasSuffix(p.Path, ".vmdk") {
		return ""
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds, ok := e.(*simulator.Datastore)
		if !ok || ds.Name != p.Datastore {
			continue
		}
		flat := strings.TrimSuffix(p.Path, ".vmdk") + "-flat.vmdk"
		return path.Join(ds.Info.GetDatastoreInfo().Url, flat)
	}
	return ""
}

// folderGuard answers 401 to /folder requests without a live session.
func folderGuard(next http.Handler, sdkPath string, pc, sm types.ManagedObjectReference) http.Handler {
	probe := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<RetrievePropertiesEx xmlns="urn:vim25"><_this type="%s">%s</_this><specSet>
<propSet><type>SessionManager</type><pathSet>currentSession</pathSet></propSet>
<objectSet><obj type="%s">%s</obj></objectSet></specSet><options></options></RetrievePropertiesEx>
</soapenv:Body></soapenv:Envelope>`, pc.Type, pc.Value, sm.Type, sm.Value)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/folder/") {
			next.ServeHTTP(w, r)
			return
		}
		check, _ := http.NewRequest(http.MethodPost, sdkPath, strings.NewReader(probe))
		check.Header.Set("Content-Type", "text/xml; charset=utf-8")
		check.Header.Set("SOAPAction", "urn:vim25/6.7")
		for _, c := range r.Cookies() {
			check.AddCookie(c)
		}
		check.RemoteAddr = r.RemoteAddr
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, check)
		if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte("<name>currentSession</name>")) {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			http.Error(w, "401 Unauthorized: no valid session", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
