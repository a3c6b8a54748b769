package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumeDir is where a pod's volume lives on the node.
func (n *Node) volumeDir(p *corev1.Pod, name string) string {
	return filepath.Join(n.cfg.Dir, "pods", string(p.UID), "volumes", name)
}

// setupVolumes creates the pod's volumes on the node: emptyDirs (a tmpfs
// for medium Memory) and the first contents of secret, configMap and
// projected volumes.
func (n *Node) setupVolumes(ctx context.Context, rt *pod) error {
	p := rt.obj
	for _, v := range p.Spec.Volumes {
		dir := n.volumeDir(p, v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory {
			// Recorded first, so that Down unmounts it even if the agent
			// dies right after.
			if err := recordMount(dir); err != nil {
				return err
			}
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "mode=0777", "tmpfs", dir).CombinedOutput(); err != nil {
				return fmt.Errorf("emptyDir %s: mount tmpfs: %w: %s", v.Name, err, bytes.TrimSpace(out))
			}
		}
		if v.EmptyDir != nil {
			_ = os.Chmod(dir, 0o777)
		}
	}
	_, err := n.refreshVolumes(ctx, rt, volumesAll)
	return err
}

// volumeRefresh says which of a pod's volumes refreshVolumes rewrites.
type volumeRefresh int

const (
	// volumesAll writes every volume: the pod's first.
	volumesAll volumeRefresh = iota
	// volumesObjects rewrites the configMap, secret and projected
	// volumes whose contents changed: a watched object changed.
	volumesObjects
	// volumesTokens rewrites the projected volumes whose tokens are due.
	volumesTokens
)

// refreshVolumes rewrites the secret, configMap and projected volumes whose
// contents changed (and tokens that are due), with the kubelet's atomic
// ..data symlink swap. It reports whether anything changed.
func (n *Node) refreshVolumes(ctx context.Context, rt *pod, what volumeRefresh) (bool, error) {
	p := rt.obj
	changed := false
	for _, v := range p.Spec.Volumes {
		var files map[string][]byte
		var err error
		switch {
		case what == volumesTokens && v.Projected == nil:
			continue
		case v.ConfigMap != nil:
			files, err = n.configMapFiles(ctx, p.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		case v.Secret != nil:
			files, err = n.secretFiles(ctx, p.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		case v.Projected != nil:
			files, err = n.projectedFiles(ctx, rt, v.Name, v.Projected, what)
		default:
			continue
		}
		if err != nil {
			return changed, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if files == nil {
			continue // nothing due
		}
		w, err := writeAtomic(n.volumeDir(p, v.Name), files)
		if err != nil {
			return changed, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		changed = changed || w
	}
	return changed, nil
}

// configMapFiles are a configMap's keys as files, from its watch when the
// pod's volumes have it watched, else from the API server (env references).
func (n *Node) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	var cm *corev1.ConfigMap
	var err error
	if obj, watched := n.watches.get("configmaps", ns, name); watched {
		cm, _ = obj.(*corev1.ConfigMap)
		if cm == nil {
			err = apierrors.NewNotFound(corev1.Resource("configmaps"), name)
		}
	} else {
		cm, err = n.cfg.Kube.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		if optional != nil && *optional {
			return map[string][]byte{}, nil
		}
		return nil, err
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return pick(data, items)
}

// secretFiles are a secret's keys as files, from its watch when the pod's
// volumes have it watched, else from the API server.
func (n *Node) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	var s *corev1.Secret
	var err error
	if obj, watched := n.watches.get("secrets", ns, name); watched {
		s, _ = obj.(*corev1.Secret)
		if s == nil {
			err = apierrors.NewNotFound(corev1.Resource("secrets"), name)
		}
	} else {
		s, err = n.cfg.Kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		if optional != nil && *optional {
			return map[string][]byte{}, nil
		}
		return nil, err
	}
	return pick(s.Data, items)
}

func pick(data map[string][]byte, items []corev1.KeyToPath) (map[string][]byte, error) {
	if len(items) == 0 {
		return data, nil
	}
	out := map[string][]byte{}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("key %q not found", it.Key)
		}
		out[it.Path] = v
	}
	return out, nil
}

// projectedFiles builds a projected volume. Service-account tokens are
// requested bound to the pod and renewed at 80% of their life (or every
// TokenRefreshInterval); nil means nothing is due.
func (n *Node) projectedFiles(ctx context.Context, rt *pod, vol string, pv *corev1.ProjectedVolumeSource, what volumeRefresh) (map[string][]byte, error) {
	p := rt.obj
	out := map[string][]byte{}
	// Tokens make the volume due when they are; objects when they may
	// have changed (writeAtomic compares with what is on disk).
	due := what != volumesTokens
	if !due && !rt.tokenDue(vol, pv) {
		return nil, nil // not even the watched objects are read
	}
	for _, src := range pv.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			t := src.ServiceAccountToken
			key := vol + "/" + t.Path
			rt.mu.Lock()
			tok, ok := rt.tokens[key]
			rt.mu.Unlock()
			if !ok || time.Now().After(tok.refreshAt) {
				exp := int64(3600)
				if t.ExpirationSeconds != nil {
					exp = *t.ExpirationSeconds
				}
				var aud []string
				if t.Audience != "" {
					aud = []string{t.Audience}
				}
				tr, err := n.cfg.Kube.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, p.Spec.ServiceAccountName, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
					Audiences: aud, ExpirationSeconds: &exp,
					BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
				}}, metav1.CreateOptions{})
				if err != nil {
					return nil, fmt.Errorf("token request: %w", err)
				}
				life := time.Until(tr.Status.ExpirationTimestamp.Time)
				next := life * 8 / 10
				if n.cfg.TokenRefreshInterval > 0 {
					next = n.cfg.TokenRefreshInterval
				}
				tok = token{value: []byte(tr.Status.Token), refreshAt: time.Now().Add(next)}
				rt.mu.Lock()
				if rt.tokens == nil {
					rt.tokens = map[string]token{}
				}
				rt.tokens[key] = tok
				rt.mu.Unlock()
				due = true
			}
			out[t.Path] = tok.value
		case src.ConfigMap != nil:
			files, err := n.configMapFiles(ctx, p.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
			if err != nil {
				return nil, err
			}
			for k, v := range files {
				out[k] = v
			}
		case src.Secret != nil:
			files, err := n.secretFiles(ctx, p.Namespace, src.Secret.Name, src.Secret.Items, src.Secret.Optional)
			if err != nil {
				return nil, err
			}
			for k, v := range files {
				out[k] = v
			}
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					continue
				}
				switch it.FieldRef.FieldPath {
				case "metadata.name":
					out[it.Path] = []byte(p.Name)
				case "metadata.namespace":
					out[it.Path] = []byte(p.Namespace)
				case "metadata.uid":
					out[it.Path] = []byte(p.UID)
				}
			}
		}
	}
	if !due {
		return nil, nil
	}
	return out, nil
}

// tokenDue reports whether a token of the projected volume vol is to be
// requested (never yet, or past its refresh time).
func (rt *pod) tokenDue(vol string, pv *corev1.ProjectedVolumeSource) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, src := range pv.Sources {
		if t := src.ServiceAccountToken; t != nil {
			if tok, ok := rt.tokens[vol+"/"+t.Path]; !ok || time.Now().After(tok.refreshAt) {
				return true
			}
		}
	}
	return false
}

type token struct {
	value     []byte
	refreshAt time.Time
}

// writeAtomic lays files out as the kubelet does: a timestamped directory,
// a ..data symlink to it swapped atomically with rename, and one symlink
// per file through ..data. It does nothing when the contents are the same.
func writeAtomic(dir string, files map[string][]byte) (bool, error) {
	same := true
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, "..data", name))
		if err != nil || !bytes.Equal(got, want) {
			same = false
			break
		}
	}
	if old, err := os.ReadDir(filepath.Join(dir, "..data")); err == nil && len(old) != len(files) {
		same = false
	} else if err != nil {
		same = false
	}
	if same {
		return false, nil
	}
	stamp := "..ts_" + time.Now().UTC().Format("2006_01_02_15_04_05.000000000")
	tsDir := filepath.Join(dir, stamp)
	if err := os.MkdirAll(tsDir, 0o755); err != nil {
		return false, err
	}
	names := make([]string, 0, len(files))
	for name, data := range files {
		if strings.Contains(name, "..") || filepath.IsAbs(name) {
			return false, fmt.Errorf("path %q leaves the volume", name)
		}
		p := filepath.Join(tsDir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return false, err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return false, err
		}
		names = append(names, name)
	}
	sort.Strings(names)
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(stamp, tmp); err != nil {
		return false, err
	}
	prev, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return false, err
	}
	for _, name := range names {
		top := strings.Split(name, "/")[0]
		link := filepath.Join(dir, top)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			if err := os.Symlink(filepath.Join("..data", top), link); err != nil {
				return false, err
			}
		}
	}
	if prev != "" && prev != stamp {
		_ = os.RemoveAll(filepath.Join(dir, prev))
	}
	return true, nil
}

// mountScript is the shell run inside the pod's mount namespace (which
// `ip netns exec` creates, private to the pod) before the container's
// program: it bind-mounts each volume at its mountPath. A mountPath whose
// parent does not exist on the node is made in an overlay of its nearest
// existing ancestor, whose writes go to a tmpfs: the container still sees
// the ancestor's files (a Corefile under /etc/coredns leaves /etc/passwd
// and /etc/resolv.conf in place), and nothing is created on the node. The
// script works from the pod's folder on the node, by relative paths, so
// that the volumes are bound from the node's own folders even when an
// overlay covers the path they are reached by (a mountPath /tmp/cache
// covers /tmp, which may hold the agent's folder).
func (n *Node) mountScript(p *corev1.Pod, c corev1.Container) (string, error) {
	// Covers first (a tmpfs laid later would hide earlier mounts), then
	// the directories and bind mounts.
	var covers, binds strings.Builder
	covered := map[string]bool{}
	root := filepath.Join(n.cfg.Dir, "pods", string(p.UID))
	for _, m := range c.VolumeMounts {
		if !filepath.IsAbs(m.MountPath) || strings.Contains(m.MountPath, "..") {
			return "", fmt.Errorf("mountPath %q is not an absolute path", m.MountPath)
		}
		src := n.volumeDir(p, m.Name)
		if _, err := os.Stat(src); err != nil {
			return "", fmt.Errorf("volumeMount %q: no such volume", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, m.SubPath)
		}
		inVol, err := filepath.Rel(n.volumeDir(p, m.Name), src)
		if err != nil || inVol == ".." || strings.HasPrefix(inVol, "../") {
			return "", fmt.Errorf("volumeMount %q: subPath %q leaves the volume", m.Name, m.SubPath)
		}
		rel, err := filepath.Rel(root, src)
		if err != nil {
			return "", fmt.Errorf("volumeMount %q: subPath %q leaves the volume", m.Name, m.SubPath)
		}
		if _, err := os.Stat(m.MountPath); err != nil {
			anc := filepath.Dir(m.MountPath)
			for {
				if _, err := os.Stat(anc); err == nil {
					break
				}
				anc = filepath.Dir(anc)
			}
			real, err := filepath.EvalSymlinks(anc)
			if err != nil {
				return "", err
			}
			if real == "/" {
				return "", fmt.Errorf("mountPath %q: only a path under an existing directory of the node can be made (the local cluster has no container filesystem)", m.MountPath)
			}
			if !covered[real] {
				stage := filepath.Join("covers", c.Name, strconv.Itoa(len(covered)))
				if err := os.MkdirAll(filepath.Join(root, stage), 0o700); err != nil {
					return "", fmt.Errorf("mountPath %q: %w", m.MountPath, err)
				}
				covers.WriteString(coverScript(real, stage, NetnsName(p.Namespace, p.Name)))
				covered[real] = true
			}
			fmt.Fprintf(&binds, "mkdir -p %s\n", shellQuote(m.MountPath))
		}
		fmt.Fprintf(&binds, "mount -c --bind %s %s\n", shellQuote(rel), shellQuote(m.MountPath))
		if m.ReadOnly || isReadOnlyVolume(p, m.Name) {
			fmt.Fprintf(&binds, "mount -o remount,bind,ro %s\n", shellQuote(m.MountPath))
		}
	}
	var b strings.Builder
	b.WriteString("set -e\nmesh_wd=$PWD\n")
	fmt.Fprintf(&b, "cd %s\n", shellQuote(root))
	b.WriteString(covers.String())
	b.WriteString(binds.String())
	b.WriteString(`cd "$mesh_wd"` + "\n")
	b.WriteString(`exec "$@"` + "\n")
	return b.String(), nil
}

// coverScript lays an overlay over dir, its writes going to a tmpfs at
// stage (relative to the script's folder). Paths that overlay's options
// cannot carry (a comma, colon or backslash) get an empty tmpfs instead, as
// the agent did before.
func coverScript(dir, stage, netns string) string {
	if strings.ContainsAny(dir+stage, ",:\\") {
		return fmt.Sprintf("mount -t tmpfs -o mode=0755 tmpfs %s\n", shellQuote(dir))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "mount -t tmpfs -o mode=0700 tmpfs %[1]s\nmkdir %[1]s/u %[1]s/w\n", shellQuote(stage))
	fmt.Fprintf(&b, "mount -c -t overlay overlay -o %s %s\n", shellQuote("lowerdir="+dir+",upperdir="+stage+"/u,workdir="+stage+"/w"), shellQuote(dir))
	if dir == "/etc" {
		// `ip netns exec` bound /etc/netns/<netns>/* (resolv.conf) over
		// /etc's files; the overlay shows the files under those mounts.
		fmt.Fprintf(&b, "for f in %s/*; do if [ -e \"$f\" ] && [ -e \"/etc/${f##*/}\" ]; then mount --bind \"$f\" \"/etc/${f##*/}\"; fi; done\n", shellQuote("/etc/netns/"+netns))
	}
	return b.String()
}

// shellQuote quotes s for sh: a pod's paths are its author's, and must not
// run as commands on the node.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func isReadOnlyVolume(p *corev1.Pod, name string) bool {
	for _, v := range p.Spec.Volumes {
		if v.Name == name {
			return v.Secret != nil || v.ConfigMap != nil || v.Projected != nil
		}
	}
	return false
}

// teardownVolumes unmounts memory emptyDirs and removes the pod's volumes.
func (n *Node) teardownVolumes(p *corev1.Pod) {
	for _, v := range p.Spec.Volumes {
		if v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory {
			_ = exec.Command("umount", n.volumeDir(p, v.Name)).Run()
			_ = forgetMount(n.volumeDir(p, v.Name))
		}
	}
	_ = os.RemoveAll(filepath.Join(n.cfg.Dir, "pods", string(p.UID)))
}

// mountsPath lists the mounts agents made on the node, for Down.
const mountsPath = "/run/mesh-e2e-node.mounts"

func recordMount(dir string) error {
	f, err := os.OpenFile(mountsPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node: record mount: %w", err)
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, dir)
	return err
}

func forgetMount(dir string) error {
	b, err := os.ReadFile(mountsPath)
	if err != nil {
		return err
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "" && l != dir {
			keep = append(keep, l)
		}
	}
	return os.WriteFile(mountsPath, []byte(strings.Join(keep, "\n")+"\n"), 0o644)
}

// unmountRecorded unmounts every recorded mount that is still there.
func unmountRecorded() error {
	b, err := os.ReadFile(mountsPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	var errs []error
	for _, dir := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if dir != "" && strings.Contains(string(mounts), " "+dir+" ") {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("umount %s: %w: %s", dir, err, bytes.TrimSpace(out)))
			}
		}
	}
	if len(errs) == 0 {
		_ = os.Remove(mountsPath)
	}
	return errors.Join(errs...)
}
