//! When a mixed-precision GEMM keeps an operand's bf16 copy beside the f32 buffer instead of
//! converting it into the lane's scratch every time.
//!
//! A bf16 GEMM reads both operands as bf16 ([`super::mixed`]). Converting each one on every
//! product cost a launch per operand per GEMM: in an inference batch the weights, which do
//! not change between batches, were converted again for every batch, and each layer's
//! activations once more after the GEMM that wrote them (on an H200, a bf16 batch of the
//! 784-1024-1024-10 service queued about 0.03 ms more on the host than an f32 one). The
//! rule, per buffer:
//!
//! - a buffer read again without having been written since its last conversion is
//!   read-mostly (a model's weights across batches; within a training step, the weights and
//!   inputs the backward pass reads again): it gets a copy of its own, filled by this
//!   conversion, and later reads reuse it while it is valid;
//! - a write to the buffer (any operation that takes it mutably) makes the copy invalid; the
//!   next read fills it again in place, since the buffer has shown itself read-mostly;
//! - a bf16 GEMM that writes a buffer read as bf16 since its last write (a layer's
//!   activations, read by the next layer's GEMM) stores the copy itself, in its epilogue
//!   (`c_bf16`, kernels/ABI.md): the read that follows needs no conversion. When such a copy
//!   is overwritten before anything read it (a gradient the ReLU's derivative rewrites in
//!   place), the buffer's GEMMs stop storing one;
//! - everything else (an input written before every read) converts into the lane's scratch,
//!   and costs no memory of its own.
//!
//! The copy costs half the buffer's f32 bytes on the device, charged to its memory limit; a
//! copy that cannot be allocated falls back to the scratch, which is not an error. Only the
//! lane that made a copy fills or reads it: its work is ordered on one stream within a unit
//! and drained between units, so a read queued after a fill sees the filled copy. A thread
//! that finds the copy held by another converts into its scratch instead of waiting (the
//! holder may be waiting for an SM partition the first thread's lane holds). A GEMM keeps
//! the copy's memory alive until it is queued, so a copy grown meanwhile (one operand read
//! twice, say) frees nothing a launch still names. The law is
//! kept here, pure, so that it is tested without a GPU.

/// What reading a buffer's first elements as bf16 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// The copy holds them: no conversion.
    Reuse,
    /// Convert them into the buffer's own copy (allocated or grown first when smaller than
    /// the read), which is then valid.
    Fill,
    /// Convert them into the lane's scratch.
    Scratch,
}

/// The state of one buffer's bf16 copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Shadow {
    /// Leading elements the copy holds as the buffer is now; 0 when it holds nothing valid.
    valid: usize,
    /// Elements the copy's memory must hold (0: none allocated).
    capacity: usize,
    /// Read as bf16 since the buffer was last written.
    read_since_write: bool,
    /// The copy was stored by a GEMM's epilogue and has not been read since.
    stored_unread: bool,
    /// A stored copy was overwritten unread: GEMMs no longer store one.
    store_wasted: bool,
}

impl Shadow {
    /// What reading the first `len` elements does, and the state after it. `Fill` assumes
    /// the copy is then allocated for [`Shadow::capacity`] (see [`Shadow::no_memory`]).
    pub(super) fn read(&mut self, len: usize) -> Read {
        let read = if self.valid >= len && len > 0 {
            Read::Reuse
        } else if self.capacity > 0 || self.read_since_write {
            Read::Fill
        } else {
            Read::Scratch
        };
        if read == Read::Fill {
            self.valid = len;
            self.capacity = self.capacity.max(len);
        }
        self.read_since_write = true;
        self.stored_unread = false;
        read
    }

    /// A bf16 GEMM writes the first `len` elements: whether its epilogue stores the copy
    /// beside them (then allocated for [`Shadow::capacity`]). Otherwise this is a write.
    pub(super) fn store(&mut self, len: usize) -> bool {
        let store = self.read_since_write && !self.store_wasted && len > 0;
        self.written();
        if store {
            self.valid = len;
            self.capacity = self.capacity.max(len);
            self.stored_unread = true;
        }
        store
    }

    /// The buffer was written: the copy no longer holds its values.
    pub(super) fn written(&mut self) {
        if self.stored_unread && self.valid > 0 {
            self.store_wasted = true;
        }
        self.valid = 0;
        self.read_since_write = false;
        self.stored_unread = false;
    }

    /// Queuing the `Fill` or the store failed: the copy holds nothing valid, and nothing is
    /// learnt about the buffer (a failed store is not a wasted one).
    pub(super) fn failed(&mut self) {
        self.valid = 0;
        self.read_since_write = false;
        self.stored_unread = false;
    }

    /// The copy for a `Fill` or a store could not be allocated: the buffer has no copy, and
    /// the read goes to the scratch (a store stores none).
    pub(super) fn no_memory(&mut self) {
        self.valid = 0;
        self.capacity = 0;
        self.stored_unread = false;
    }

    /// Elements the copy's memory must hold after a `Fill` or a store.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::{Read, Shadow};

    #[test]
    fn weights_read_by_every_batch_are_converted_twice_then_never() {
        let mut w = Shadow::default();
        let reads: Vec<Read> = (0..5).map(|_| w.read(1024)).collect();
        assert_eq!(
            reads,
            [
                Read::Scratch,
                Read::Fill,
                Read::Reuse,
                Read::Reuse,
                Read::Reuse
            ]
        );
        assert_eq!(w.capacity(), 1024);
    }

    #[test]
    fn an_activation_written_before_every_read_stays_in_the_scratch() {
        let mut x = Shadow::default();
        for _ in 0..4 {
            x.written();
            assert_eq!(x.read(256), Read::Scratch);
        }
        assert_eq!(x.capacity(), 0, "no memory spent on it");
    }

    #[test]
    fn a_training_step_converts_each_weight_once_after_the_first_step() {
        // Forward reads W, backward reads it again (dX = dY·Wᵀ), the optimiser writes it.
        let mut w = Shadow::default();
        assert_eq!(w.read(64), Read::Scratch);
        assert_eq!(w.read(64), Read::Fill);
        w.written();
        for _ in 0..3 {
            assert_eq!(w.read(64), Read::Fill, "forward: refilled in place");
            assert_eq!(w.read(64), Read::Reuse, "backward: the same values");
            w.written();
        }
    }

    #[test]
    fn a_write_is_never_hidden_by_the_copy() {
        let mut w = Shadow::default();
        w.read(8);
        w.read(8);
        assert_eq!(w.read(8), Read::Reuse);
        w.written();
        assert_ne!(w.read(8), Read::Reuse);
    }

    #[test]
    fn a_longer_read_than_the_copy_holds_fills_it_again() {
        let mut x = Shadow::default();
        x.read(100);
        assert_eq!(x.read(100), Read::Fill);
        assert_eq!(x.read(50), Read::Reuse, "a shorter prefix is held");
        assert_eq!(x.read(200), Read::Fill, "a longer one is not");
        assert_eq!(x.capacity(), 200);
        assert_eq!(x.read(200), Read::Reuse);
    }

    #[test]
    fn a_copy_that_could_not_be_allocated_is_asked_for_again_later() {
        let mut w = Shadow::default();
        w.read(8);
        assert_eq!(w.read(8), Read::Fill);
        w.no_memory();
        assert_eq!(w.read(8), Read::Fill, "still read-mostly: try again");
        assert_eq!(w.read(8), Read::Reuse);
    }

    #[test]
    fn an_empty_read_reuses_nothing() {
        let mut w = Shadow::default();
        assert_ne!(w.read(0), Read::Reuse);
    }

    #[test]
    fn activations_are_stored_by_the_gemm_that_writes_them_once_seen_read() {
        // Each batch: the layer's GEMM writes h, the next layer's GEMM reads it.
        let mut h = Shadow::default();
        assert!(!h.store(512), "first batch: nothing known yet");
        assert_eq!(h.read(512), Read::Scratch);
        for _ in 0..3 {
            assert!(h.store(512), "the epilogue stores the copy");
            assert_eq!(h.read(512), Read::Reuse, "and the next GEMM reads it");
        }
        assert!(h.store(640), "a larger batch");
        assert_eq!(h.capacity(), 640);
        assert_eq!(h.read(640), Read::Reuse);
        assert!(h.store(64), "a smaller one");
        assert_eq!(h.read(64), Read::Reuse);
        assert_eq!(h.read(65), Read::Fill, "past what the store wrote");
    }

    #[test]
    fn a_stored_copy_rewritten_unread_stops_the_stores() {
        // dX = dY·Wᵀ, then the ReLU's derivative rewrites dX in place, then two reads.
        let mut dx = Shadow::default();
        let mut stores = Vec::new();
        let mut reads = Vec::new();
        for _ in 0..4 {
            stores.push(dx.store(256));
            dx.written();
            reads.push((dx.read(256), dx.read(256)));
        }
        assert_eq!(stores, [false, true, false, false]);
        assert_eq!(reads[0], (Read::Scratch, Read::Fill));
        assert!(reads[1..].iter().all(|&r| r == (Read::Fill, Read::Reuse)));
    }

    #[test]
    fn a_gemm_output_nothing_reads_as_bf16_gets_no_copy() {
        // A weight gradient: written by a GEMM, read by the optimiser in f32.
        let mut dw = Shadow::default();
        for _ in 0..3 {
            assert!(!dw.store(1000));
        }
        assert_eq!(dw.capacity(), 0);
    }

    #[test]
    fn a_store_without_memory_is_a_plain_write() {
        let mut h = Shadow::default();
        h.store(16);
        h.read(16);
        assert!(h.store(16));
        h.no_memory();
        assert_eq!(h.read(16), Read::Scratch, "nothing stored: converted");
        assert!(h.store(16), "the next store tries again");
    }

    #[test]
    fn a_failed_store_does_not_stop_the_stores() {
        let mut h = Shadow::default();
        h.store(16);
        h.read(16);
        assert!(h.store(16));
        h.failed();
        assert_ne!(h.read(16), Read::Reuse, "nothing valid after a failure");
        assert!(h.store(16), "stores go on");
    }
}
