package meshctl

import (
	"context"

	"github.com/mesh-dev/mesh/controlplane/castatus"
)

// passCAStatus is the CA status as read in one pass of the checks: four
// checks look at it, and one read serves them all.
type passCAStatus struct {
	read bool
	doc  *castatus.Document
	err  error
}

// caStatus reads the CA status once per pass (see newPass). An attempt
// cut short by its own timeout or by cancellation is not kept, so a
// later check reads again.
func (e *checkEnv) caStatus(ctx context.Context) (*castatus.Document, error) {
	if e.caRead.read {
		return e.caRead.doc, e.caRead.err
	}
	d, err := castatus.Get(ctx, e.kube, e.meshNS)
	if err == nil || ctx.Err() == nil {
		e.caRead = passCAStatus{read: true, doc: d, err: err}
	}
	return d, err
}

// newPass forgets what the last pass read: at the start of a run and
// before a check is retried under --wait, which is waiting for the
// cluster to change.
func (e *checkEnv) newPass() { e.caRead = passCAStatus{} }
