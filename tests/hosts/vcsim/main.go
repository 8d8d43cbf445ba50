// Command vmctl-vcsim is vmctl's test launcher for the govmomi vSphere API simulator.
//
// It is built in GOPATH mode against Debian's packaged govmomi library
// (golang-github-vmware-govmomi-dev, under /usr/share/gocode) by tests/hosts/esx.py.
// It builds a simulator.Model (ESX() for a standalone host, VPX() for a vCenter),
// serves it over TLS with the given certificate, prints ONE JSON "ready" line on
// stdout and serves until SIGTERM or SIGINT. Diagnostics go to stderr.
//
// The password is taken from the environment variable named by -password-env
// (default VCSIM_PASSWORD) so that it does not appear in the process list;
// -password overrides it. The password is never printed.
//
// snapshots.go makes snapshot revert restore the VM's configuration and power state, as real
// vSphere does (the library's simulator only moves snapshot.currentSnapshot); disks.go sizes
// flat extents and guards /folder; cbt.go adds changed block tracking and
// VirtualMachine.QueryChangedDiskAreas; hostfailure.go failed hosts (DisconnectHost_Task,
// ShutdownHost_Task, ReconnectHost_Task), the .vmx across UnregisterVM / RegisterVM_Task and
// the VMs' memory overhead.
package main

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
)

// readyLine is the machine-readable line printed on stdout once the server accepts connections.
type readyLine struct {
	Event          string   `json:"event"`
	URL            string   `json:"url"`
	Host           string   `json:"host"`
	Port           int      `json:"port"`
	Mode           string   `json:"mode"`
	Username       string   `json:"username"`
	PID            int      `json:"pid"`
	CertFile       string   `json:"cert_file"`
	Thumbprint     string   `json:"thumbprint"`
	ThumbprintSHA1 string   `json:"thumbprint_sha1"`
	IdleTimeout    float64  `json:"idle_timeout_seconds"`
	APIVersion     string   `json:"api_version"`
	Datacenters    []string `json:"datacenters"`
	Clusters       []string `json:"clusters"`
	Hosts          []string `json:"hosts"`
	VMCount        int      `json:"vm_count"`
	StartSeconds   float64  `json:"start_seconds"`
}

type options struct {
	mode           string
	listen         string
	certFile       string
	keyFile        string
	username       string
	password       string
	passwordEnv    string
	idleTimeout    time.Duration
	vms            int
	datacenters    int
	clusters       int
	clusterHosts   int
	standaloneHost int
	datastores     int
	portgroups     int
	autostart      bool
	trace          bool
	stdinEOFExit   bool
	methodDelay    string
}

func parseFlags() *options {
	o := &options{}
	flag.StringVar(&o.mode, "mode", "vcenter", "simulated endpoint: esx (standalone host) or vcenter")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "listen address host:port (port 0 = free port)")
	flag.StringVar(&o.certFile, "tlscert", "", "PEM certificate file to serve (required)")
	flag.StringVar(&o.keyFile, "tlskey", "", "PEM private key file for -tlscert (required)")
	flag.StringVar(&o.username, "username", "user", "the only user name accepted by Login")
	flag.StringVar(&o.password, "password", "",
		"the only password accepted by Login (default: value of the -password-env variable)")
	flag.StringVar(&o.passwordEnv, "password-env", "VCSIM_PASSWORD",
		"environment variable holding the password when -password is not given")
	flag.DurationVar(&o.idleTimeout, "idle-timeout", 0,
		"expire sessions idle for longer than this (e.g. 2s, 30m); 0 = never")
	flag.IntVar(&o.vms, "vm", 2,
		"VMs per resource pool: per standalone host and per cluster (Model.Machine)")
	flag.IntVar(&o.datacenters, "dc", 1, "vcenter: number of datacenters (Model.Datacenter)")
	flag.IntVar(&o.clusters, "cluster", 1, "vcenter: clusters per datacenter (Model.Cluster)")
	flag.IntVar(&o.clusterHosts, "host", 3, "vcenter: hosts per cluster (Model.ClusterHost)")
	flag.IntVar(&o.standaloneHost, "standalone-host", 1,
		"vcenter: standalone hosts per datacenter (Model.Host)")
	flag.IntVar(&o.datastores, "ds", 1, "local datastores, mounted on every host (Model.Datastore)")
	flag.IntVar(&o.portgroups, "pg", 1,
		"vcenter: distributed port groups per datacenter (Model.Portgroup)")
	flag.BoolVar(&o.autostart, "autostart", true, "power on the VMs the model creates")
	flag.BoolVar(&o.trace, "trace", false, "write SOAP traffic to stderr")
	flag.BoolVar(&o.stdinEOFExit, "exit-on-stdin-eof", false,
		"stop as on SIGTERM when stdin reaches EOF (the parent holding the pipe died)")
	// upstream vcsim's flag of the same name: the simulator sleeps this long before serving
	// the call (outside its inventory lock, so delayed calls overlap), e.g. to give
	// RelocateVM_Task the seconds a real vMotion takes
	flag.StringVar(&o.methodDelay, "method-delay", "",
		"delay per method in milliseconds, 'Method1:ms,Method2:ms' (DelayConfig.MethodDelay)")
	flag.Parse()
	return o
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vmctl-vcsim: "+format+"\n", args...)
	os.Exit(2)
}

// colonHex formats a digest the way vSphere shows certificate thumbprints (AA:BB:...).
func colonHex(sum []byte) string {
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

func buildModel(o *options) *simulator.Model {
	var m *simulator.Model
	switch o.mode {
	case "esx":
		m = simulator.ESX()
	case "vcenter":
		m = simulator.VPX()
		m.Datacenter = o.datacenters
		m.Cluster = o.clusters
		m.ClusterHost = o.clusterHosts
		m.Host = o.standaloneHost
		m.Portgroup = o.portgroups
	default:
		fail("unknown -mode %q (want esx or vcenter)", o.mode)
	}
	m.Machine = o.vms
	m.Datastore = o.datastores
	m.Autostart = o.autostart
	return m
}

// inventoryPath returns the datacenter-relative path of an entity, e.g. "DC0/DC0_C0"
// for a cluster (the "host" folder and other folders below the datacenter are left out).
func inventoryPath(e mo.Entity) string {
	var names []string
	cur := e
	for cur != nil {
		me := cur.Entity()
		if _, ok := cur.(*simulator.Datacenter); ok {
			names = append(names, me.Name)
			break
		}
		if _, ok := cur.(*simulator.Folder); !ok {
			names = append(names, me.Name)
		}
		if me.Parent == nil {
			break
		}
		next, ok := simulator.Map.Get(*me.Parent).(mo.Entity)
		if !ok {
			break
		}
		cur = next
	}
	for i, j := 0, len(names)-1; i < j; i, j = i+1, j-1 {
		names[i], names[j] = names[j], names[i]
	}
	return strings.Join(names, "/")
}

func entityNames(kind string, path bool) []string {
	var out []string
	for _, e := range simulator.Map.All(kind) {
		if path {
			out = append(out, inventoryPath(e))
		} else {
			out = append(out, e.Entity().Name)
		}
	}
	sort.Strings(out)
	return out
}

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	log.SetPrefix("vmctl-vcsim: ")
	log.SetOutput(os.Stderr)
	o := parseFlags()

	if o.certFile == "" || o.keyFile == "" {
		fail("-tlscert and -tlskey are required")
	}
	password := o.password
	if password == "" && o.passwordEnv != "" {
		password = os.Getenv(o.passwordEnv)
	}
	if o.username == "" || password == "" {
		fail("a non-empty username and password are required (-password or $%s)", o.passwordEnv)
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		fail("bad -listen %q: %v", o.listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Printf("warning: listening on non-loopback address %q", host)
	}

	cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
	if err != nil {
		fail("loading TLS certificate: %v", err)
	}
	der := cert.Certificate[0]
	sum256 := sha256.Sum256(der)
	sum1 := sha1.Sum(der)

	simulator.SessionIdleTimeout = o.idleTimeout
	simulator.Trace = o.trace

	started := time.Now()
	model := buildModel(o)
	if o.methodDelay != "" {
		model.DelayConfig.MethodDelay = map[string]int{}
		for _, item := range strings.Split(o.methodDelay, ",") {
			name, ms, ok := strings.Cut(item, ":")
			n, err := strconv.Atoi(ms)
			if !ok || err != nil || n < 0 {
				fail("bad -method-delay item %q (want Method:milliseconds)", item)
			}
			model.DelayConfig.MethodDelay[name] = n
		}
	}
	if err := model.Create(); err != nil {
		fail("creating the %s model: %v", o.mode, err)
	}
	// Snapshot revert as real vSphere does it (snapshots.go); after Create, which makes the
	// registry.
	fidelity := newSnapshotFidelity(o.username)
	simulator.Map.AddHandler(fidelity)
	simulator.Map.AddHandler(diskExtents{}) // disks.go: flat extents as large as the disk
	sizeAllDisks()
	tracking := newChangeTracking() // cbt.go: changed block tracking, QueryChangedDiskAreas
	simulator.Map.AddHandler(tracking)
	tracking.supportAll()
	// hostfailure.go: failed hosts, the .vmx kept across UnregisterVM / RegisterVM_Task, overhead
	failure := newHostFailure(model.ServiceContent.PropertyCollector, *model.ServiceContent.SessionManager)
	simulator.Map.AddHandler(failure)
	failure.start()

	model.Service.Listen = &url.URL{Host: o.listen, User: url.UserPassword(o.username, password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	model.Service.RegisterEndpoints = true
	server := model.Service.NewServer()
	// NewServer has started serving already, but nobody knows the port before the ready
	// line, so no request can be in flight while the handler is replaced.
	server.Config.Handler = fidelity.wrap(server.Config.Handler)
	server.Config.Handler = tracking.wrap(server.Config.Handler)
	server.Config.Handler = failure.wrap(server.Config.Handler)
	server.Config.Handler = folderGuard(server.Config.Handler, server.URL.Path,
		model.ServiceContent.PropertyCollector, *model.ServiceContent.SessionManager)
	elapsed := time.Since(started)

	port, _ := strconv.Atoi(server.URL.Port())
	sdkURL := url.URL{Scheme: "https", Host: server.URL.Host, Path: server.URL.Path}

	ready := readyLine{
		Event:          "ready",
		URL:            sdkURL.String(),
		Host:           server.URL.Hostname(),
		Port:           port,
		Mode:           o.mode,
		Username:       o.username,
		PID:            os.Getpid(),
		CertFile:       o.certFile,
		Thumbprint:     colonHex(sum256[:]),
		ThumbprintSHA1: colonHex(sum1[:]),
		IdleTimeout:    o.idleTimeout.Seconds(),
		APIVersion:     model.ServiceContent.About.ApiVersion,
		Datacenters:    entityNames("Datacenter", false),
		Clusters:       entityNames("ClusterComputeResource", true),
		Hosts:          entityNames("HostSystem", false),
		VMCount:        len(simulator.Map.All("VirtualMachine")),
		StartSeconds:   elapsed.Seconds(),
	}
	if ready.Clusters == nil {
		ready.Clusters = []string{}
	}
	line, err := json.Marshal(ready)
	if err != nil {
		fail("encoding the ready line: %v", err)
	}
	// Catch the stop signals before announcing readiness, so an immediate SIGTERM still
	// gets a clean shutdown.
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	// Only the ready line goes to stdout; it is the harness's signal that we accept connections.
	fmt.Fprintln(os.Stdout, string(line))
	_ = os.Stdout.Sync()

	if o.stdinEOFExit {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop <- syscall.SIGHUP // reported as "hangup": stdin closed
		}()
	}
	sig := <-stop
	log.Printf("received %s, stopping", sig)
	done := make(chan struct{})
	go func() {
		server.Close() // waits for in-flight requests
		close(done)
	}()
	select {
	case <-done:
		log.Printf("stopped")
	case <-time.After(5 * time.Second):
		log.Printf("in-flight requests did not finish within 5s; exiting anyway")
	case sig = <-stop:
		log.Printf("received %s again; exiting now", sig)
		return
	}
	started = time.Now()
	model.Remove() // the datastores' temporary directories
	log.Printf("removed the model's files in %.1fs", time.Since(started).Seconds())
}
