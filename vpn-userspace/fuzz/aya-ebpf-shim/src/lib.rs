//! What `vpn-ebpf/src/parse.rs` takes from `aya_ebpf`, for the host: an `XdpContext` whose
//! `data()`/`data_end()` are the bounds of a byte slice, as the kernel's are those of the
//! frame. The fuzz crate depends on it under the name `aya_ebpf`, so the parse module compiles
//! unchanged (`#[path]`) and its raw-pointer reads run under AddressSanitizer.

pub mod programs {
    use core::marker::PhantomData;

    pub struct XdpContext<'a> {
        data: usize,
        data_end: usize,
        _frame: PhantomData<&'a [u8]>,
    }

    impl<'a> XdpContext<'a> {
        pub fn new(frame: &'a [u8]) -> XdpContext<'a> {
            let data = frame.as_ptr() as usize;
            XdpContext {
                data,
                data_end: data + frame.len(),
                _frame: PhantomData,
            }
        }

        pub fn data(&self) -> usize {
            self.data
        }

        pub fn data_end(&self) -> usize {
            self.data_end
        }
    }
}
