//! Passing file descriptors between processes over a unix socketpair.
//!
//! The helper that creates the TUN device lives in another user and network
//! namespace; the descriptor it opens is handed back with `SCM_RIGHTS`, the same
//! way slirp4netns' `sendfd()` does. The pair is `SOCK_SEQPACKET`, so each message
//! arrives whole and a peer that dies shows up as end-of-file instead of a hang.
//! Received descriptors are marked close-on-exec atomically (`MSG_CMSG_CLOEXEC`).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// The largest message either side sends; longer ones are truncated by the kernel
/// and rejected here.
pub const MAX_MESSAGE: usize = 4096;

/// One end of a connected `SOCK_SEQPACKET` socketpair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A message received from a [`Channel`]: its bytes and, if one came with it, a
/// file descriptor.
#[derive(Debug)]
pub struct Received {
    pub data: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

/// Create a connected pair of channels, both close-on-exec.
pub fn channel_pair() -> io::Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Send one message, with `fd` attached when given.
    pub fn send(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        if data.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message too long for the fd channel",
            ));
        }
        let raw;
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(fd) => {
                raw = [fd.as_raw_fd()];
                fds = [ControlMessage::ScmRights(&raw)];
                &fds
            }
            None => &[],
        };
        let iov = [IoSlice::new(data)];
        let sent = sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short send on the fd channel",
            ));
        }
        Ok(())
    }

    /// Receive one message. `Ok(None)` means the other end closed without sending.
    pub fn recv(&self) -> io::Result<Option<Received>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_buf = cmsg_space!([std::os::fd::RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let truncated = msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
            let mut fd = None;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raws) = cmsg {
                    for raw in raws {
                        // SAFETY: the kernel just installed `raw` in our fd table for
                        // this message; nothing else owns it, so wrapping it right
                        // away makes sure it is closed exactly once (extra fds, if a
                        // peer sent more than one, are closed by their drop).
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            if truncated {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated message on the fd channel",
                ));
            }
            break (msg.bytes, fd);
        };
        if len == 0 && fd.is_none() {
            return Ok(None);
        }
        buf.truncate(len);
        Ok(Some(Received { data: buf, fd }))
    }
}

impl Channel {
    /// Let this channel's descriptor survive `execve`, for a process that
    /// replaces itself with a fresh program and keeps talking (the endpoint
    /// resolver, see [`crate::resolver`]).
    pub fn keep_across_exec(&self) -> io::Result<()> {
        nix::fcntl::fcntl(
            &self.fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        Ok(())
    }

    /// The channel a process was started with as descriptor `fd` (see
    /// [`Channel::keep_across_exec`]), made close-on-exec again. Checked to be
    /// a `SOCK_SEQPACKET` socket, so a wrong number is an error here rather
    /// than odd reads later.
    ///
    /// # Safety
    /// Nothing else in this process may own or close `fd`: it is taken over.
    pub unsafe fn inherited(fd: RawFd) -> io::Result<Self> {
        // SAFETY: the caller promises nobody else owns `fd`; if it is not
        // open, `fcntl` fails before anything takes ownership.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        let kind = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType)?;
        if kind != SockType::SeqPacket {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} is not a SOCK_SEQPACKET socket"),
            ));
        }
        // SAFETY: open (checked above) and ours alone (the caller's promise).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(channel: Channel) -> OwnedFd {
        channel.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn passes_a_file_descriptor_and_its_message() {
        let (a, b) = channel_pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"hello through SCM_RIGHTS").unwrap();
        a.send(b"ok", Some(file.as_fd())).unwrap();
        drop(file);

        let got = b.recv().unwrap().unwrap();
        assert_eq!(got.data, b"ok");
        let mut file = std::fs::File::from(got.fd.unwrap());
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello through SCM_RIGHTS");
    }

    #[test]
    fn message_without_fd() {
        let (a, b) = channel_pair().unwrap();
        a.send(b"error: no such device", None).unwrap();
        let got = b.recv().unwrap().unwrap();
        assert_eq!(got.data, b"error: no such device");
        assert!(got.fd.is_none());
    }

    #[test]
    fn closed_peer_is_end_of_file() {
        let (a, b) = channel_pair().unwrap();
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn oversized_message_is_refused() {
        let (a, _b) = channel_pair().unwrap();
        let err = a.send(&vec![0; MAX_MESSAGE + 1], None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
