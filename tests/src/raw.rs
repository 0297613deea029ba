//! AF_PACKET sockets bound to one interface: send whole frames, receive with a deadline.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const ETH_P_ALL: u16 = 0x0003;

pub struct RawSocket {
    fd: i32,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a socket on `ifindex` of the calling thread's network namespace.
    pub fn new(ifindex: u32) -> Result<RawSocket> {
        // SAFETY: plain socket(2)/bind(2) with a zeroed, filled sockaddr_ll.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ALL.to_be()) as i32);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            let s = RawSocket {
                fd,
                ifindex: ifindex as i32,
            };
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = ETH_P_ALL.to_be();
            sa.sll_ifindex = s.ifindex;
            if libc::bind(
                fd,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error()).context("bind AF_PACKET");
            }
            // The kernel strips 802.1Q tags into skb metadata before packet taps; ask for it
            // back (PACKET_AUXDATA) so received frames are shown as they were on the wire.
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            Ok(s)
        }
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: zeroed sockaddr_ll filled below; valid buffer.
        let n = unsafe {
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = self.ifindex;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&frame[..6]);
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n != frame.len() as isize {
            return Err(std::io::Error::last_os_error()).context("sendto");
        }
        Ok(())
    }

    /// The next incoming (not outgoing) frame for which `want` is true, within `timeout`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        self.recv_where(timeout, false, want)
    }

    /// [`RawSocket::recv_matching`] over the frames the interface sends as well.
    pub fn recv_sent_or_received(
        &self,
        timeout: Duration,
        want: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        self.recv_where(timeout, true, want)
    }

    fn recv_where(
        &self,
        timeout: Duration,
        outgoing: bool,
        mut want: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            // SAFETY: valid buffers for recvmsg; the control message is read only when the
            // kernel says it is a tpacket_auxdata.
            let (n, pkttype, vlan) = unsafe {
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                let mut cbuf = [0u64; 16];
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = (&raw mut sa).cast();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cbuf.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&cbuf);
                let n = libc::recvmsg(self.fd, &mut msg, 0);
                let mut vlan = None;
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        let aux = &*(libc::CMSG_DATA(c) as *const libc::tpacket_auxdata);
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                            let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                                aux.tp_vlan_tpid
                            } else {
                                0x8100
                            };
                            vlan = Some((tpid, aux.tp_vlan_tci));
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
                (n, sa.sll_pkttype, vlan)
            };
            if n <= 0 || (pkttype == libc::PACKET_OUTGOING && !outgoing) {
                continue;
            }
            let mut f = buf[..n as usize].to_vec();
            if let (Some((tpid, tci)), true) = (vlan, f.len() >= 12) {
                let mut tag = tpid.to_be_bytes().to_vec();
                tag.extend_from_slice(&tci.to_be_bytes());
                f.splice(12..12, tag);
            }
            if want(&f) {
                return Some(f);
            }
        }
        None
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}
