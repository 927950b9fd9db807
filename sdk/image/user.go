package image

import (
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"

	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"
)

// User is a resolved process identity.
type User struct {
	// UID and GID are the user and primary group IDs.
	UID, GID uint32
	// AdditionalGids are the supplementary groups of a named user in the
	// image's /etc/group.
	AdditionalGids []uint32
}

// maxIDFile bounds how much of /etc/passwd and /etc/group is read.
const maxIDFile = 4 << 20

// ResolveUser resolves an image config's user ("", "uid", "uid:gid",
// "name", "name:group", or mixes) against the root file system rootfs: names
// are looked up in its /etc/passwd and /etc/group, which are resolved
// inside rootfs (symbolic links cannot lead out of it). Numeric IDs need no
// files. "" is root. An unknown name fails with errdefs.ErrInvalidArgument.
func ResolveUser(rootfs, spec string) (User, error) {
	passwd, err := openInRoot(rootfs, "/etc/passwd")
	if err != nil {
		return User{}, err
	}
	if passwd != nil {
		defer passwd.Close()
	}
	group, err := openInRoot(rootfs, "/etc/group")
	if err != nil {
		return User{}, err
	}
	if group != nil {
		defer group.Close()
	}
	var pr, gr io.Reader
	if passwd != nil {
		pr = io.LimitReader(passwd, maxIDFile)
	}
	if group != nil {
		gr = io.LimitReader(group, maxIDFile)
	}
	eu, err := user.GetExecUser(spec, &user.ExecUser{}, pr, gr)
	if err != nil {
		return User{}, fmt.Errorf("image user %q: %v: %w", spec, err, errdefs.ErrInvalidArgument)
	}
	u := User{UID: uint32(eu.Uid), GID: uint32(eu.Gid)}
	for _, g := range eu.Sgids {
		if g != eu.Gid {
			u.AdditionalGids = append(u.AdditionalGids, uint32(g))
		}
	}
	return u, nil
}

// openInRoot opens file p of the tree rootfs, following symbolic links
// inside rootfs only; nil if it does not exist or is not a regular file.
func openInRoot(rootfs, p string) (*os.File, error) {
	full, err := fs.RootPath(rootfs, p)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(full, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, iofs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		// A symbolic link left (ELOOP) or other oddities: no file.
		return nil, nil
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil
	}
	return f, nil
}
