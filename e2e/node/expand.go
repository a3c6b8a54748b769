package node

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// expandVars replaces $(NAME) in s with NAME's value in env (NAME=value
// entries, the last of a name winning), as the kubelet expands a
// container's command, args and env values: $$ is a literal $, and a
// reference to a name not in env, or one not closed, stays as written.
func expandVars(s string, env []string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookupEnv(env, name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func lookupEnv(env []string, name string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

// effective is the container as the kubelet runs it: $(VAR) in its
// command and args expanded from its environment, and the pod's
// securityContext user and group where the container sets none.
func effective(p *corev1.Pod, c corev1.Container, env []string) corev1.Container {
	c.Command = expandAll(c.Command, env)
	c.Args = expandAll(c.Args, env)
	if psc := p.Spec.SecurityContext; psc != nil && (psc.RunAsUser != nil || psc.RunAsGroup != nil) {
		sc := &corev1.SecurityContext{}
		if c.SecurityContext != nil {
			sc = c.SecurityContext.DeepCopy()
		}
		if sc.RunAsUser == nil {
			sc.RunAsUser = psc.RunAsUser
		}
		if sc.RunAsGroup == nil {
			sc.RunAsGroup = psc.RunAsGroup
		}
		c.SecurityContext = sc
	}
	return c
}

func expandAll(ss []string, env []string) []string {
	if ss == nil {
		return nil
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = expandVars(s, env)
	}
	return out
}
