// Package e2e runs Magnetar end to end: a private containerd 2.x (built from
// the version pinned in go.mod) with magnetar-sandboxer as its sandbox proxy
// plugin, driven through CRI like kubelet does, for the runc and wasm kinds.
//
// The tests need root and `make deps tools build`, and skip otherwise,
// unless MAGNETAR_E2E_REQUIRED=1 (set by `make test`) turns a skip into a
// failure.
//
// Tests that touch only pods of their own and leave containerd and the
// sandboxer alone call t.Parallel: they run together after the others,
// as many at once as -parallel allows (the microVM tests, each keeping
// about one core busy under QEMU TCG, are most of them). Tests that restart
// containerd or the sandboxer, change its configuration, or look at the
// whole host never do.
package e2e
