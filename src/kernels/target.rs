//! Which architectures a kernel module is built for: every one (compute_90 PTX, forward
//! compatible), or Hopper's architecture-specific sm_90a.

use serde::Serialize;

use super::{CudaArch, aot};

/// The architectures a kernel module is built for. build.rs reads it from a line
/// `// setpoint-module-target: sm_90a` in the source; a module without one is portable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleTarget {
    /// Any architecture: its committed PTX is for compute_90, which Hopper runs and newer GPUs
    /// compile forward; NVRTC compiles it for anything else.
    Portable,
    /// Hopper's architecture-specific features (wgmma, setmaxnreg): its
    /// committed PTX and machine code are for compute_90a / sm_90a, which run on compute
    /// capability 9.0 only. For any other architecture NVRTC compiles the module's portable
    /// fallback (kernels that trap, which the host never launches there).
    Sm90a,
}

impl ModuleTarget {
    /// What the module is compiled for on a GPU, or in a check, of architecture `arch`: the
    /// architecture-specific sm_90a in place of plain sm_90 for an [`ModuleTarget::Sm90a`]
    /// module, `arch` otherwise.
    pub fn arch_for(self, arch: &CudaArch) -> CudaArch {
        match self {
            Self::Sm90a if arch.sm() == "sm_90" => {
                CudaArch::parse("sm_90a").unwrap_or_else(|_| arch.clone())
            }
            _ => arch.clone(),
        }
    }

    /// The virtual architecture of the module's committed PTX (`kernels/ptx/`).
    pub fn aot_arch(self) -> &'static str {
        match self {
            Self::Portable => aot::AOT_ARCH,
            Self::Sm90a => "compute_90a",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::source;
    use super::*;

    #[test]
    fn sm_90a_modules_compile_for_the_architecture_specific_target_on_hopper_only() {
        let arch = |a: &str| CudaArch::parse(a).unwrap();
        let t = ModuleTarget::Sm90a;
        assert_eq!(t.arch_for(&arch("sm_90")).sm(), "sm_90a");
        assert_eq!(t.arch_for(&arch("sm_90a")).sm(), "sm_90a");
        assert_eq!(t.arch_for(&arch("sm_80")).sm(), "sm_80");
        assert_eq!(t.arch_for(&arch("sm_100")).compute(), "compute_100");
        assert_eq!(
            ModuleTarget::Portable.arch_for(&arch("sm_90")).sm(),
            "sm_90"
        );
        assert_eq!(t.aot_arch(), "compute_90a");
        assert_eq!(ModuleTarget::Portable.aot_arch(), "compute_90");
        assert_eq!(
            source("gemm_wgmma").map(|s| s.target),
            Some(ModuleTarget::Sm90a)
        );
        assert_eq!(
            source("gemm").map(|s| s.target),
            Some(ModuleTarget::Portable)
        );
    }
}
