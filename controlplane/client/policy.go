package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// ackTimeout bounds one AckPolicy call; a controller that does not answer
// in that time is treated like a broken stream.
const ackTimeout = 10 * time.Second

// maxAckError bounds the NACK text the controller stores and shows in the
// policy's status.
const maxAckError = 1024

// watchPolicy reads one policy stream until it fails: each policy goes to
// Config.Policy and is then acknowledged, in order. A failed
// acknowledgement ends the stream: the reconnect resends the current
// policy, which is then acknowledged again, so the controller never
// misses what this proxy enforces.
func (c *Client) watchPolicy(ctx context.Context) (delivered bool, err error) {
	stream, err := c.api.WatchPolicy(ctx, c.request())
	if err != nil {
		return false, fmt.Errorf("client: open policy stream: %w", err)
	}
	for {
		p, err := stream.Recv()
		if err != nil {
			return delivered, fmt.Errorf("client: policy stream: %w", err)
		}
		c.m.messages.WithLabelValues(kindPolicy).Inc()
		if !delivered {
			c.m.connected.WithLabelValues(kindPolicy).Set(1)
		}
		delivered = true
		// Read before the callback, which owns p from then on.
		version := p.GetVersion()
		ack := &controlplanev1.PolicyAck{Namespace: c.cfg.Namespace, Pod: c.cfg.Pod, Version: version}
		if err := c.enforce(p); err != nil {
			ack.Error = ackError(err)
			c.m.nacks.Inc()
			c.log.Warn("policy refused; the previous one stays in force", "kind", kindPolicy, "version", clip(version), "err", err)
		} else {
			c.policyReady.Store(true)
			c.log.Info("policy enforced", "kind", kindPolicy, "version", clip(version))
		}
		actx, cancel := context.WithTimeout(ctx, ackTimeout)
		_, err = c.api.AckPolicy(actx, ack)
		cancel()
		if err != nil {
			return delivered, fmt.Errorf("client: acknowledge policy %q: %w", clip(version), err)
		}
	}
}

// enforce hands p to Config.Policy. A policy without a version is refused
// first: its acknowledgement could not say what is enforced.
func (c *Client) enforce(p *controlplanev1.Policy) error {
	if p.GetVersion() == "" {
		return errors.New("client: policy has no version")
	}
	return c.cfg.Policy(p)
}

// ackError is err's text as a NACK carries it: valid UTF-8 (protobuf
// refuses to send anything else) and bounded.
func ackError(err error) string {
	s := strings.ToValidUTF8(err.Error(), "\uFFFD")
	if len(s) <= maxAckError {
		return s
	}
	cut := maxAckError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
