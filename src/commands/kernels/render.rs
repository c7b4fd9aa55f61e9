//! The `kernels check` report: a table of kernels with their resources and the tools' notes
//! as text, or one JSON document.

use serde_json::json;

use super::check::{ModuleCheck, Toolchain};
use crate::device::cuda::choice::{
    H200_SMS, REPRESENTATIVE_SHAPES, WGMMA_EXAMPLES, choose_gemm, choose_gemm_at, wgmma_operands,
};
use crate::device::{Gemm, Precision};
use crate::kernels::{self, CudaArch, ModuleTarget, PtxOrigin};
use crate::util::table::Table;

/// What compiled kernel code the binary carries, in words.
fn embedded_kernels_text() -> String {
    match (kernels::prebuilt_arch(), kernels::sass_arch()) {
        (Some(p), Some(s)) => format!("{p} PTX and {s} machine code (no NVRTC needed there)"),
        (Some(p), None) => format!("{p} PTX (ptxas was absent at build time: no machine code)"),
        _ => "no compiled kernels (kernels/ptx is stale or missing): NVRTC compiles them".into(),
    }
}

/// Why resources are missing when ptxas was not found.
pub(super) fn no_ptxas_note() -> String {
    format!(
        "ptxas not found (--ptxas, $PTXAS, PATH, ./{}): the kernels were compiled to PTX but \
         not assembled, so registers, shared memory and spills are not reported; \
         scripts/cuda-tools.sh installs ptxas",
        kernels::LOCAL_PTXAS
    )
}

/// The report as text: the tools, a table of kernels, each module's messages, a summary.
pub(super) fn text(checks: &[ModuleCheck], tools: &Toolchain) -> String {
    let mut out = header(tools);
    out.push_str(&kernel_table(checks).render());
    out.push_str(&gemm_choices(&tools.arch));
    out.push_str(&messages(checks));
    out.push_str(&summary(checks, tools));
    out
}

/// The tools and what the binary carries.
fn header(tools: &Toolchain) -> String {
    let mut out = format!(
        "kernels check for {}: NVRTC {}, ptxas {}\nthe binary carries: {}\n",
        tools.arch,
        tools.nvrtc_version.as_deref().unwrap_or("not loaded"),
        match (&tools.ptxas, &tools.ptxas_version) {
            (Some(p), Some(v)) => format!("{v} ({})", p.display()),
            (Some(p), None) => p.display().to_string(),
            (None, _) => "not found".into(),
        },
        embedded_kernels_text()
    );
    if tools.ptxas.is_none() {
        out.push_str(&no_ptxas_note());
        out.push('\n');
    }
    out.push('\n');
    out
}

/// One row per kernel: module, PTX origin and resources (or FAILED).
fn kernel_table(checks: &[ModuleCheck]) -> Table {
    let mut table = Table::new(&[
        "module",
        "arch",
        "kernel",
        "ptx",
        "registers",
        "smem_bytes",
        "spill_store_bytes",
        "spill_load_bytes",
    ])
    .right_align(&[4, 5, 6, 7]);
    let dash = || "-".to_string();
    for c in checks {
        let origin = c.origin.map_or("-", PtxOrigin::as_str).to_string();
        if c.error.is_some() && c.resources.is_none() && c.origin.is_none() {
            table.row(vec![c.module.into(), c.arch.sm(), dash(), "FAILED".into()]);
            continue;
        }
        for k in &c.kernels {
            let r = c
                .resources
                .as_ref()
                .and_then(|rs| rs.iter().find(|r| &r.kernel == k));
            let mut row = vec![c.module.to_string(), c.arch.sm(), k.clone(), origin.clone()];
            match r {
                Some(r) => row.extend([
                    r.registers.to_string(),
                    r.smem_bytes.to_string(),
                    r.spill_store_bytes.to_string(),
                    r.spill_load_bytes.to_string(),
                ]),
                None if c.error.is_some() => row.extend(["FAILED".into(), dash(), dash(), dash()]),
                None => row.extend([dash(), dash(), dash(), dash()]),
            }
            table.row(row);
        }
    }
    table
}

/// Which kernel the CUDA backend runs a bf16 GEMM of each representative shape on, on a GPU
/// of `arch`, and why: one line per shape.
fn gemm_choices(arch: &CudaArch) -> String {
    let mut out = format!(
        "\nbf16 GEMM kernels on {arch}, {H200_SMS} SMs as on an H200 (m x n x k: kernel, tiles: \
         why):\n"
    );
    for &(m, n, k) in REPRESENTATIVE_SHAPES {
        let g = Gemm::new(m, n, k);
        let c = choose_gemm(&g, Precision::Bf16, arch.has_tensor_cores(), H200_SMS);
        let tiles = c.tiles(&g);
        let plural = if tiles == 1 { "" } else { "s" };
        out.push_str(&format!(
            "  {m} x {n} x {k}: {}, {tiles} tile{plural}: {}\n",
            c.kernel.name(),
            c.reason
        ));
    }
    out.push_str("  (f32 precision: gemm_f32 for every shape)\n");
    out.push_str(&wgmma_rule(arch));
    out
}

/// On Hopper, which products gemm_bf16_wgmma (sm_90a) takes where the device is opened with
/// it (`device.gemm_wgmma`), and why the others do not go to it.
fn wgmma_rule(arch: &CudaArch) -> String {
    if ModuleTarget::Sm90a.arch_for(arch).sm() != "sm_90a" {
        return String::new();
    }
    let mut out = String::from(
        "\nwith device.gemm_wgmma = true (off by default: not yet run on a GPU), \
         gemm_bf16_wgmma (sm_90a: wgmma fed by TMA) takes the products given gemm_bf16_128 \
         when the TMA can address their operands:\n",
    );
    for &(m, n, k, ta, tb, offset) in WGMMA_EXAMPLES {
        let mut g = Gemm::new(m, n, k);
        g.trans_a = ta;
        g.trans_b = tb;
        let c = choose_gemm_at(&g, true, H200_SMS, true, (offset, 0));
        let what = match wgmma_operands(&g, offset, 0) {
            Err(why) => format!("{why}: stays on {}", c.kernel.name()),
            Ok(()) => format!("{}: {}", c.kernel.name(), c.reason),
        };
        out.push_str(&format!(
            "  {m} x {n} x {k}{}{}{}: {what}\n",
            if ta { " (A transposed)" } else { "" },
            if tb { " (B transposed)" } else { "" },
            if offset != 0 {
                format!(" (A at byte {offset} of its allocation)")
            } else {
                String::new()
            }
        ));
    }
    out
}

/// The same choices for the JSON report.
fn gemm_choices_json(arch: &CudaArch) -> Vec<serde_json::Value> {
    REPRESENTATIVE_SHAPES
        .iter()
        .map(|&(m, n, k)| {
            let g = Gemm::new(m, n, k);
            let c = choose_gemm(&g, Precision::Bf16, arch.has_tensor_cores(), H200_SMS);
            json!({
                "m": m, "n": n, "k": k,
                "kernel": c.kernel.name(),
                "tiles": c.tiles(&g),
                "reason": c.reason.to_string(),
            })
        })
        .collect()
}

/// NVRTC's messages, ptxas's warnings and each failure, module by module.
fn messages(checks: &[ModuleCheck]) -> String {
    let mut out = String::new();
    for c in checks {
        if !c.nvrtc_log.is_empty() {
            out.push_str(&format!(
                "\nNVRTC messages for {}:\n{}\n",
                c.module, c.nvrtc_log
            ));
        }
        for w in &c.ptxas_warnings {
            out.push_str(&format!("\nptxas warning for {}: {w}\n", c.module));
        }
        if let Some(e) = &c.error {
            out.push_str(&format!("\n{} FAILED: {e}\n", c.module));
        }
    }
    out
}

/// How many kernels and modules passed or failed, and which kernels spill registers.
fn summary(checks: &[ModuleCheck], tools: &Toolchain) -> String {
    let kernels: usize = checks.iter().map(|c| c.kernels.len()).sum();
    let spilling: Vec<&str> = checks
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .flatten()
        .filter(|r| r.spill_store_bytes > 0 || r.spill_load_bytes > 0)
        .map(|r| r.kernel.as_str())
        .collect();
    let failed = checks.iter().filter(|c| c.error.is_some()).count();
    let arch = &tools.arch;
    let mut out = String::from("\n");
    if failed > 0 {
        out.push_str(&format!("{failed} of {} modules failed\n", checks.len()));
    } else {
        let how = if tools.ptxas.is_some() {
            format!("compiled and assembled for {arch}")
        } else {
            format!("compiled to PTX for {} (not assembled)", arch.compute())
        };
        out.push_str(&format!(
            "{kernels} kernels in {} modules {how}\n",
            checks.len()
        ));
    }
    if tools.ptxas.is_some() {
        if spilling.is_empty() {
            out.push_str("no register spills\n");
        } else {
            out.push_str(&format!(
                "register spills (reported, not a failure): {}\n",
                spilling.join(", ")
            ));
        }
    }
    out
}

/// The report as one JSON document.
pub(super) fn json(checks: &[ModuleCheck], tools: &Toolchain) -> serde_json::Value {
    let modules: Vec<serde_json::Value> = checks.iter().map(module_json).collect();
    json!({
        "ok": checks.iter().all(|c| c.error.is_none()),
        "arch": tools.arch.sm(),
        "embedded": { "ptx": kernels::prebuilt_arch(), "sass": kernels::sass_arch() },
        "nvrtc_version": tools.nvrtc_version,
        "ptxas": tools.ptxas,
        "ptxas_version": tools.ptxas_version,
        "modules": modules,
        "bf16_gemm_choices": gemm_choices_json(&tools.arch),
    })
}

/// One module in the JSON report, with its kernels.
fn module_json(c: &ModuleCheck) -> serde_json::Value {
    let kernels: Vec<serde_json::Value> = c
        .kernels
        .iter()
        .map(|k| {
            let r = c
                .resources
                .as_ref()
                .and_then(|rs| rs.iter().find(|r| &r.kernel == k));
            json!({
                "name": k,
                "compiled": c.origin.is_some(),
                "assembled": r.is_some(),
                "registers": r.map(|r| r.registers),
                "smem_bytes": r.map(|r| r.smem_bytes),
                "barriers": r.and_then(|r| r.barriers),
                "stack_frame_bytes": r.map(|r| r.stack_frame_bytes),
                "spill_store_bytes": r.map(|r| r.spill_store_bytes),
                "spill_load_bytes": r.map(|r| r.spill_load_bytes),
            })
        })
        .collect();
    json!({
        "module": c.module,
        "arch": c.arch.sm(),
        "ok": c.error.is_none(),
        "ptx_origin": c.origin,
        "ptx_bytes": c.ptx_bytes,
        "nvrtc_log": c.nvrtc_log,
        "ptxas_warnings": c.ptxas_warnings,
        "error": c.error,
        "kernels": kernels,
    })
}
