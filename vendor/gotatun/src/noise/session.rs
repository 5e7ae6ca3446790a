// This Source Code Form is subject to the terms of the Mozilla Public
// License, v. 2.0. If a copy of the MPL was not distributed with this
// file, You can obtain one at https://mozilla.org/MPL/2.0/.
//
// This file incorporates work covered by the following copyright and
// permission notice:
//
//   Copyright (c) Mullvad VPN AB. All rights reserved.
//   Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
//
// SPDX-License-Identifier: MPL-2.0

use crate::crypto::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use crate::{
    noise::errors::WireGuardError,
    noise::index_table::Index,
    packet::{Packet, WgData, WgDataHeader, WgKind},
};
use bytes::Buf;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use zerocopy::FromBytes;

/// The maximum number of transport data messages that may be sent or received under a single
/// session key, per section 6.2 of the [whitepaper](https://www.wireguard.com/papers/wireguard.pdf)
/// (`Reject-After-Messages = 2^64 - 2^13 - 1`).
/// Refusing to use a counter at or beyond this value guarantees the 64-bit AEAD nonce can never
/// wrap and reuse a nonce with the same key.
pub(super) const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

pub struct Session {
    pub(crate) receiving_index: Index,
    sending_index: u32,
    receiver: LessSafeKey,
    sender: LessSafeKey,
    // wireguard4netns: the counters, written for every packet, each on cache lines of their
    // own (and with them the session's alignment, which puts an `Arc`'s reference counts on
    // a line of their own too): the device seals (opens) a session's packets on one thread
    // while another reserves counters, and the keys shared a line with what it wrote.
    sending_key_counter: OwnLine<AtomicU64>,
    receiving_key_counter: OwnLine<Mutex<ReceivingKeyCounterValidator>>,
}

// wireguard4netns: see `Session`'s counters.
/// A value on cache lines of its own.
#[repr(align(64))]
#[derive(Default)]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "Session: {}<- ->{}",
            self.receiving_index, self.sending_index
        )
    }
}

// Receiving buffer constants
const WORD_SIZE: u64 = 64;
// 64*128 = 8192, matching the WireGuard replay window in both the Linux kernel and wireguard-go
const N_WORDS: u64 = 128;
const N_BITS: u64 = WORD_SIZE * N_WORDS;

#[derive(Debug, Clone)]
struct ReceivingKeyCounterValidator {
    /// In order to avoid replays while allowing for some reordering of the packets, we keep a
    /// bitmap of received packets, and the value of the highest counter
    next: u64,
    /// Used to estimate packet loss
    receive_cnt: u64,
    bitmap: [u64; N_WORDS as usize],
}

impl Default for ReceivingKeyCounterValidator {
    fn default() -> Self {
        // `derive(Default)` only covers arrays up to length 32, so implement it by hand.
        Self {
            next: 0,
            receive_cnt: 0,
            bitmap: [0u64; N_WORDS as usize],
        }
    }
}

impl ReceivingKeyCounterValidator {
    #[inline(always)]
    fn set_bit(&mut self, idx: u64) {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        let bit = (bit_idx % WORD_SIZE) as usize;
        self.bitmap[word] |= 1 << bit;
    }

    #[inline(always)]
    fn clear_bit(&mut self, idx: u64) {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        let bit = (bit_idx % WORD_SIZE) as usize;
        self.bitmap[word] &= !(1u64 << bit);
    }

    /// Clear the word that contains idx
    #[inline(always)]
    fn clear_word(&mut self, idx: u64) {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        self.bitmap[word] = 0;
    }

    /// Returns true if bit is set, false otherwise
    #[inline(always)]
    fn check_bit(&self, idx: u64) -> bool {
        let bit_idx = idx % N_BITS;
        let word = (bit_idx / WORD_SIZE) as usize;
        let bit = (bit_idx % WORD_SIZE) as usize;
        ((self.bitmap[word] >> bit) & 1) == 1
    }

    /// Returns true if the counter was not yet received, and is not too far back
    #[inline(always)]
    fn will_accept(&self, counter: u64) -> Result<(), WireGuardError> {
        if counter >= self.next {
            // As long as the counter is growing no replay took place for sure
            return Ok(());
        }
        if counter + N_BITS < self.next {
            // Drop if too far back
            return Err(WireGuardError::InvalidCounter);
        }
        if self.check_bit(counter) {
            Err(WireGuardError::DuplicateCounter)
        } else {
            Ok(())
        }
    }

    /// Marks the counter as received, and returns true if it is still good (in case during
    /// decryption something changed)
    #[inline(always)]
    fn mark_did_receive(&mut self, counter: u64) -> Result<(), WireGuardError> {
        if counter + N_BITS < self.next {
            // Drop if too far back
            return Err(WireGuardError::InvalidCounter);
        }
        if counter == self.next {
            // Usually the packets arrive in order, in that case we simply mark the bit and
            // increment the counter
            self.set_bit(counter);
            self.next += 1;
            return Ok(());
        }
        if counter < self.next {
            // A packet arrived out of order, check if it is valid, and mark
            if self.check_bit(counter) {
                return Err(WireGuardError::InvalidCounter);
            }
            self.set_bit(counter);
            return Ok(());
        }
        // Packets where dropped, or maybe reordered, skip them and mark unused
        if counter - self.next >= N_BITS {
            // Too far ahead, clear all the bits
            for c in self.bitmap.iter_mut() {
                *c = 0;
            }
        } else {
            let mut i = self.next;
            while !i.is_multiple_of(WORD_SIZE) && i < counter {
                // Clear until i aligned to word size
                self.clear_bit(i);
                i += 1;
            }
            while i + WORD_SIZE < counter {
                // Clear whole word at a time
                self.clear_word(i);
                i = (i + WORD_SIZE) & 0u64.wrapping_sub(WORD_SIZE);
            }
            while i < counter {
                // Clear any remaining bits
                self.clear_bit(i);
                i += 1;
            }
        }
        self.set_bit(counter);
        self.next = counter + 1;
        Ok(())
    }
}

impl Session {
    pub(super) fn new(
        local_index: Index,
        sending_index: u32,
        receiving_key: [u8; 32],
        sending_key: [u8; 32],
    ) -> Session {
        Session {
            receiving_index: local_index,
            sending_index,
            receiver: LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &receiving_key).unwrap(),
            ),
            sender: LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &sending_key).unwrap()),
            sending_key_counter: OwnLine(AtomicU64::new(0)),
            receiving_key_counter: OwnLine(Mutex::new(Default::default())),
        }
    }

    /// Returns true if receiving counter is good to use
    fn receiving_counter_quick_check(&self, counter: u64) -> Result<(), WireGuardError> {
        let counter_validator = self.receiving_key_counter.lock();
        counter_validator.will_accept(counter)
    }

    /// Returns true if receiving counter is good to use, and marks it as used {
    pub(super) fn receiving_counter_mark(&self, counter: u64) -> Result<(), WireGuardError> {
        let mut counter_validator = self.receiving_key_counter.lock();
        let ret = counter_validator.mark_did_receive(counter);
        if ret.is_ok() {
            counter_validator.receive_cnt += 1;
        }
        ret
    }

    /// Test-only: fast-forward the sending counter so the `REJECT_AFTER_MESSAGES` limit can be
    /// exercised without actually sending billions of packets.
    #[cfg(test)]
    pub(super) fn set_sending_key_counter(&self, value: u64) {
        self.sending_key_counter.store(value, Ordering::Relaxed);
    }

    /// Encapsulate `packet` into a [`WgData`].
    ///
    /// Returns `Err(packet)` (the original, un-encapsulated packet) once the sending counter has
    /// reached `REJECT_AFTER_MESSAGES`: the session must then be replaced by a fresh handshake
    /// before more transport data can be sent, so the AEAD nonce can never wrap.
    // wireguard4netns: now the counter's reservation and the seal, which the device's data
    // path runs apart (see `SealJob`).
    pub(super) fn format_packet_data(&self, packet: Packet) -> Result<Packet<WgData>, Packet> {
        match self.reserve_sending_counter() {
            Some(counter) => Ok(self.seal_packet_data(packet, counter)),
            None => Err(packet),
        }
    }

    // wireguard4netns: the sequential half of `format_packet_data`: the nonce counter, or
    // `None` once it reached `REJECT_AFTER_MESSAGES`.
    fn reserve_sending_counter(&self) -> Option<u64> {
        // Check before incrementing so an exhausted counter is never advanced (and thus can never
        // wrap back around to a previously used value).
        if self.sending_key_counter.load(Ordering::Relaxed) >= REJECT_AFTER_MESSAGES {
            return None;
        }
        Some(self.sending_key_counter.fetch_add(1, Ordering::Relaxed))
    }

    // wireguard4netns: the half of `format_packet_data` that may run anywhere, in any
    // order: the header with the reserved `counter`, and the AEAD.
    fn seal_packet_data(&self, packet: Packet, sending_key_counter: u64) -> Packet<WgData> {
        let payload_len = packet.len();
        let len = WgData::OVERHEAD + payload_len;

        // wireguard4netns: encapsulate in the packet's own buffer instead of allocating,
        // zeroing and copying into a new one for every packet: grow it by the overhead (pool
        // buffers have room; others reallocate once) and move the payload up past the header.
        let mut buf = packet;
        buf.buf_mut().resize(len, 0);
        buf.buf_mut().copy_within(..payload_len, WgDataHeader::LEN);

        let data = WgData::mut_from_bytes(buf.buf_mut())
            .expect("buffer size is at least WgData::OVERHEAD");

        // Initialize wireguard header.
        data.header = WgDataHeader::new()
            .with_receiver_idx(self.sending_index)
            .with_counter(sending_key_counter);

        let mut nonce = [0u8; 12];
        nonce[4..12].copy_from_slice(&sending_key_counter.to_le_bytes());

        // Encrypt the inner packet+padding in-place.
        let tag = self
            .sender
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[]),
                data.encrypted_encapsulated_packet_mut(),
            )
            .expect("encryption must succeed");

        data.tag_mut().copy_from_slice(tag.as_ref());

        // this won't panic since we've correctly initialized a WgData packet
        let packet = buf.try_into_wg().expect("is a wireguard packet");
        let WgKind::Data(packet) = packet else {
            unreachable!("is a wireguard data packet");
        };

        packet
    }

    /// Decapsulate `packet` and return the decrypted data.
    // wireguard4netns: now the three steps the device's data path runs apart (see
    // `OpenJob`): the checks, the AEAD, the replay window. `Tunn` runs them itself.
    #[cfg(test)]
    pub(super) fn receive_packet_data(
        &self,
        packet: Packet<WgData>,
    ) -> Result<Packet, WireGuardError> {
        let counter = self.check_packet_data(&packet)?;
        let packet = self.open_packet_data(packet)?;
        // After decryption is done, check counter again, and mark as received
        self.receiving_counter_mark(counter)?;
        Ok(packet)
    }

    // wireguard4netns: the checks before the AEAD; returns the packet's counter.
    fn check_packet_data(&self, packet: &Packet<WgData>) -> Result<u64, WireGuardError> {
        if packet.header.receiver_idx.get() != self.receiving_index.value() {
            return Err(WireGuardError::WrongIndex);
        }

        let counter = packet.header.counter.get();

        if counter >= REJECT_AFTER_MESSAGES {
            return Err(WireGuardError::ConnectionExpired);
        }

        // Don't reuse counters, in case this is a replay attack we want to quickly check the
        // counter without running expensive decryption
        self.receiving_counter_quick_check(counter)?;
        Ok(counter)
    }

    // wireguard4netns: the AEAD, which may run anywhere, in any order.
    fn open_packet_data(&self, mut packet: Packet<WgData>) -> Result<Packet, WireGuardError> {
        let mut nonce = [0u8; 12];
        nonce[4..12].copy_from_slice(&packet.header.counter.to_bytes());

        // decrypt the data in-place
        let decrypted_len = self
            .receiver
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[]),
                &mut packet.encrypted_encapsulated_packet_and_tag,
            )
            .map_err(|_| WireGuardError::InvalidAeadTag)?
            .len();

        // shift the packet buffer slice onto the decrypted data
        let mut packet = packet.into_bytes();
        let buf = packet.buf_mut();
        buf.advance(WgDataHeader::LEN);
        buf.truncate(decrypted_len);
        Ok(packet)
    }

    /// Returns the estimated downstream packet loss for this session
    pub(super) fn current_packet_cnt(&self) -> (u64, u64) {
        let counter_validator = self.receiving_key_counter.lock();
        (counter_validator.next, counter_validator.receive_cnt)
    }
}

// wireguard4netns: a data packet's crypto apart from the peer's state, so the device can
// run it on worker threads while the steps that must be sequential stay under the peer's
// lock, in order. Sending: `Tunn::prepare_outgoing_packet` picks the session and reserves
// the nonce counter (a `SealJob`), `SealJob::seal` encrypts. Receiving:
// `Tunn::prepare_incoming_data` finds the session and makes the quick replay check (an
// `OpenJob`), `OpenJob::open` decrypts (an `Opened`), `Tunn::finish_incoming_data` marks
// the counter in the replay window (a duplicate that passed the quick check is dropped
// there) and does the session, timer and byte bookkeeping. Each job holds its session, so
// a handshake replacing it meanwhile changes nothing for packets already under way.

/// An outgoing data packet whose session and nonce counter are chosen: seal it anywhere.
pub struct SealJob {
    session: Arc<Session>,
    unsealed: Unsealed,
}

impl SealJob {
    pub(super) fn reserve(session: &Arc<Session>, packet: Packet) -> Result<Self, Packet> {
        match session.reserve_sending_counter() {
            Some(counter) => Ok(SealJob {
                session: Arc::clone(session),
                unsealed: Unsealed { packet, counter },
            }),
            None => Err(packet),
        }
    }

    /// The length of the sealed packet.
    pub fn sealed_len(&self) -> usize {
        WgData::OVERHEAD + self.unsealed.packet.len()
    }

    /// Whether this is a keepalive (no payload).
    pub fn is_keepalive(&self) -> bool {
        self.unsealed.packet.is_empty()
    }

    /// The nonce counter reserved for this packet.
    pub fn counter(&self) -> u64 {
        self.unsealed.counter
    }

    /// Encrypt: the WireGuard data packet to send.
    pub fn seal(self) -> Packet<WgData> {
        self.unsealed.seal(&self.session)
    }

    // wireguard4netns: for the device's data path, which keeps one `Arc<Session>` per run of
    // a session's packets, not one per packet: with a reference per packet, the thread that
    // prepares a batch counted it up while another, sealing the one before, counted it down,
    // and the count's cache line moved between their cores for every packet.
    /// The job's session, and the rest, to seal with it.
    pub(crate) fn into_parts(self) -> (Arc<Session>, Unsealed) {
        (self.session, self.unsealed)
    }
}

/// A [`SealJob`] without its session (see [`SealJob::into_parts`]).
pub(crate) struct Unsealed {
    packet: Packet,
    counter: u64,
}

impl Unsealed {
    /// [`SealJob::seal`] with the job's `session`.
    pub(crate) fn seal(self, session: &Session) -> Packet<WgData> {
        session.seal_packet_data(self.packet, self.counter)
    }
}

/// A received data packet whose session is found and whose counter passed the quick
/// replay check: open it anywhere, then finish it in order with
/// [`Tunn::finish_incoming_data`](super::Tunn::finish_incoming_data).
pub struct OpenJob {
    session: Arc<Session>,
    unopened: Unopened,
}

impl OpenJob {
    pub(super) fn check(
        session: &Arc<Session>,
        packet: Packet<WgData>,
    ) -> Result<Self, WireGuardError> {
        let counter = session.check_packet_data(&packet)?;
        Ok(OpenJob {
            session: Arc::clone(session),
            unopened: Unopened { packet, counter },
        })
    }

    /// Decrypt and authenticate.
    pub fn open(self) -> Result<Opened, WireGuardError> {
        let decrypted = self.unopened.open(&self.session)?;
        Ok(Opened {
            session: self.session,
            decrypted,
        })
    }

    // wireguard4netns: see `SealJob::into_parts`.
    /// The job's session, and the rest, to open with it.
    pub(crate) fn into_parts(self) -> (Arc<Session>, Unopened) {
        (self.session, self.unopened)
    }
}

/// An [`OpenJob`] without its session (see [`OpenJob::into_parts`]).
pub(crate) struct Unopened {
    packet: Packet<WgData>,
    counter: u64,
}

impl Unopened {
    /// [`OpenJob::open`] with the job's `session`; finish it with
    /// [`Tunn::finish_decrypted`](super::Tunn::finish_decrypted) and that session.
    pub(crate) fn open(self, session: &Session) -> Result<Decrypted, WireGuardError> {
        let packet = session.open_packet_data(self.packet)?;
        Ok(Decrypted {
            packet,
            counter: self.counter,
        })
    }
}

/// An [`Opened`] without its session.
pub(crate) struct Decrypted {
    pub(super) packet: Packet,
    pub(super) counter: u64,
}

/// A decrypted, authenticated data packet, not yet marked in the replay window.
pub struct Opened {
    pub(super) session: Arc<Session>,
    pub(super) decrypted: Decrypted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::index_table::IndexTable;
    use bytes::BytesMut;

    /// Build a `Session` with throwaway keys and a real receiving index.
    fn test_session() -> Session {
        let table: IndexTable = IndexTable::from_os_rng();
        Session::new(table.new_index(), 0, [0u8; 32], [0u8; 32])
    }

    /// Craft a (cryptographically invalid) `WgData` packet with a chosen receiver index and
    /// counter, for exercising the receive-path checks that run before decryption.
    fn make_data_packet(receiver_idx: u32, counter: u64) -> Packet<WgData> {
        let mut buf = Packet::from_bytes(BytesMut::zeroed(WgData::OVERHEAD));
        let data = WgData::mut_from_bytes(buf.buf_mut()).expect("buffer is WgData::OVERHEAD");
        data.header = WgDataHeader::new()
            .with_receiver_idx(receiver_idx)
            .with_counter(counter);
        let WgKind::Data(packet) = buf.try_into_wg().expect("is a wireguard packet") else {
            unreachable!("is a wireguard data packet");
        };
        packet
    }

    /// The receive path must reject a counter at/beyond REJECT_AFTER_MESSAGES before decryption,
    /// while a counter just below the limit is allowed past that check (and fails later at AEAD).
    #[test]
    fn test_receive_rejects_counter_at_reject_after_messages() {
        let session = test_session();
        let recv_idx = session.receiving_index.value();

        let over_limit = make_data_packet(recv_idx, REJECT_AFTER_MESSAGES);
        assert!(matches!(
            session.receive_packet_data(over_limit),
            Err(WireGuardError::ConnectionExpired)
        ));

        let in_limit = make_data_packet(recv_idx, REJECT_AFTER_MESSAGES - 1);
        assert!(matches!(
            session.receive_packet_data(in_limit),
            Err(WireGuardError::InvalidAeadTag)
        ));
    }

    #[test]
    fn test_replay_counter() {
        let mut c: ReceivingKeyCounterValidator = Default::default();

        assert!(c.mark_did_receive(0).is_ok());
        assert!(c.mark_did_receive(0).is_err());
        assert!(c.mark_did_receive(1).is_ok());
        assert!(c.mark_did_receive(1).is_err());
        assert!(c.mark_did_receive(63).is_ok());
        assert!(c.mark_did_receive(63).is_err());
        assert!(c.mark_did_receive(15).is_ok());
        assert!(c.mark_did_receive(15).is_err());

        for i in 64..N_BITS + 128 {
            assert!(c.mark_did_receive(i).is_ok());
            assert!(c.mark_did_receive(i).is_err());
        }

        assert!(c.mark_did_receive(N_BITS * 3).is_ok());
        for i in 0..=N_BITS * 2 {
            assert!(matches!(
                c.will_accept(i),
                Err(WireGuardError::InvalidCounter)
            ));
            assert!(c.mark_did_receive(i).is_err());
        }
        for i in N_BITS * 2 + 1..N_BITS * 3 {
            assert!(c.will_accept(i).is_ok());
        }
        assert!(matches!(
            c.will_accept(N_BITS * 3),
            Err(WireGuardError::DuplicateCounter)
        ));

        for i in (N_BITS * 2 + 1..N_BITS * 3).rev() {
            assert!(c.mark_did_receive(i).is_ok());
            assert!(c.mark_did_receive(i).is_err());
        }

        assert!(c.mark_did_receive(N_BITS * 3 + 70).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 71).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 72).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 72 + 125).is_ok());
        assert!(c.mark_did_receive(N_BITS * 3 + 63).is_ok());

        assert!(c.mark_did_receive(N_BITS * 3 + 70).is_err());
        assert!(c.mark_did_receive(N_BITS * 3 + 71).is_err());
        assert!(c.mark_did_receive(N_BITS * 3 + 72).is_err());
    }
}
