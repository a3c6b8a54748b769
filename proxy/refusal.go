package proxy

// audit reports a refusal to the Authorizer's RefusalObserver, if any,
// rationed per reason: an attacker can cause refusals as fast as it can
// open connections, and each record is a write on the node. Reasons are a
// fixed set of words.
func (p *Proxy) audit(r Refusal) {
	o, ok := p.cfg.Authorizer.(RefusalObserver)
	if !ok {
		return
	}
	ok, n := p.audited.Allow(r.Direction + "/" + r.Reason)
	if !ok {
		return
	}
	r.Suppressed = n
	o.Refused(r)
}
