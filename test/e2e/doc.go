// Package e2e runs Magnetar end to end: a private containerd 2.x (built from
// the version pinned in go.mod) with magnetar-sandboxer as its sandbox proxy
// plugin, driven through CRI like kubelet does, for the runc and wasm kinds.
//
// The tests need root and `make deps tools build`, and skip otherwise,
// unless MAGNETAR_E2E_REQUIRED=1 (set by `make test`) turns a skip into a
// failure.
package e2e
