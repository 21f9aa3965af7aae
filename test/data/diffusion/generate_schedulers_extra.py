"""Expected vectors for scheduler configs beyond diffusers' defaults (schedulers_extra.json).

Runs diffusers' own scheduler code, v0.31.0 (src/diffusers/schedulers/*.py of commit
89e4d6219805975bd7d253a267e1951badc9f1c0), on torch 1.13.1 / NumPy 1.24 (Debian bookworm's
python3-torch and python3-numpy), CPU, float32, like ../../../shared/golden/schedulers/.
diffusers is imported from a checkout's source through small stand-ins for its configuration
and hub utilities (written below), so no other package is needed:

    /usr/bin/python3 generate_schedulers_extra.py /path/to/diffusers/src/diffusers/schedulers

Each case records the config, the timesteps and sigmas after set_timesteps(n), and a full
sampling loop on a [1, 1, 2, 4] sample with stand-in N(0, 1) model outputs: per step t,
sample_in, scaled_model_input, model_output, the N(0, 1) noise the step drew (if any),
prev_sample and pred_original_sample (where the step returns one).
"""
import json, os, sys, tempfile, shutil, functools, inspect

SHIM = {
    "diffusers/__init__.py": "",
    "diffusers/schedulers/__init__.py": "",
    "diffusers/configuration_utils.py": '''
import functools, inspect
class FrozenDict(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k)
class ConfigMixin:
    def register_to_config(self, **kwargs):
        d = dict(getattr(self, "_internal_dict", {}))
        d.update(kwargs)
        self._internal_dict = FrozenDict(d)
    @property
    def config(self):
        return self._internal_dict
def register_to_config(init):
    @functools.wraps(init)
    def inner(self, *args, **kwargs):
        sig = inspect.signature(init)
        params = {k: p.default for k, p in sig.parameters.items() if k != "self"}
        bound = sig.bind(self, *args, **kwargs)
        params.update({k: v for k, v in bound.arguments.items() if k != "self"})
        self.register_to_config(**params)
        init(self, *args, **kwargs)
    return inner
''',
    "diffusers/utils/__init__.py": '''
import logging as _logging
class BaseOutput:
    pass
class PushToHubMixin:
    pass
def deprecate(*args, **kwargs):
    pass
def is_scipy_available():
    return False
class logging:
    @staticmethod
    def get_logger(name):
        return _logging.getLogger(name)
''',
    "diffusers/utils/torch_utils.py": '''
import torch
DRAWN = []
def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    t = torch.randn(shape, generator=generator, dtype=dtype)
    DRAWN.append(t.clone())
    return t
''',
    "huggingface_hub/__init__.py": "",
    "huggingface_hub/utils.py": "def validate_hf_hub_args(f):\n    return f\n",
}

FILES = ["scheduling_utils", "scheduling_ddpm", "scheduling_ddim", "scheduling_euler_discrete",
         "scheduling_euler_ancestral_discrete", "scheduling_heun_discrete", "scheduling_dpmsolver_multistep",
         "scheduling_unipc_multistep", "scheduling_flow_match_euler_discrete", "scheduling_flow_match_heun_discrete"]

CASES = [
    # name, class, config, steps, step kwargs
    ("ddim_trailing_v_zsnr", "DDIMScheduler", dict(timestep_spacing="trailing", prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False), 7, {}),
    ("ddim_linspace_noalpha1_eta05", "DDIMScheduler", dict(timestep_spacing="linspace", set_alpha_to_one=False, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 9, {"eta": 0.5}),
    ("ddpm_large_threshold_sample", "DDPMScheduler", dict(beta_schedule="scaled_linear", variance_type="fixed_large", thresholding=True, sample_max_value=1.5, prediction_type="sample", steps_offset=1), 8, {}),
    ("ddpm_cosine_linspace_v", "DDPMScheduler", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", prediction_type="v_prediction", clip_sample=False), 6, {}),
    ("euler_karras_v_leading_sigmamin", "EulerDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction", timestep_spacing="leading", steps_offset=1, final_sigmas_type="sigma_min"), 8, {}),
    ("euler_trailing_zsnr", "EulerDiscreteScheduler", dict(timestep_spacing="trailing", rescale_betas_zero_snr=True), 6, {}),
    ("euler_churn", "EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 8, {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 10.0}),
    ("euler_ancestral", "EulerAncestralDiscreteScheduler", dict(), 8, {}),
    ("euler_ancestral_v_trailing", "EulerAncestralDiscreteScheduler", dict(prediction_type="v_prediction", timestep_spacing="trailing"), 6, {}),
    ("heun_default", "HeunDiscreteScheduler", dict(), 6, {}),
    ("heun_karras_v", "HeunDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction"), 5, {}),
    ("dpm3m_karras_v", "DPMSolverMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True, prediction_type="v_prediction"), 20, {}),
    ("dpm2m_heun_lowfinal", "DPMSolverMultistepScheduler", dict(solver_type="heun"), 8, {}),
    ("dpm2m_sigmamin_eulerfinal_leading", "DPMSolverMultistepScheduler", dict(final_sigmas_type="sigma_min", euler_at_final=True, timestep_spacing="leading", steps_offset=1), 16, {}),
    ("dpm2m_threshold_sample", "DPMSolverMultistepScheduler", dict(thresholding=True, sample_max_value=1.5, prediction_type="sample"), 7, {}),
    ("dpm3m_trailing_zsnr", "DPMSolverMultistepScheduler", dict(solver_order=3, timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction"), 16, {}),
    ("unipc3_bh1_sigmamin", "UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min"), 10, {}),
    ("unipc3_bh2_karras_v", "UniPCMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True, prediction_type="v_prediction"), 12, {}),
    ("unipc2_trailing_nocorr", "UniPCMultistepScheduler", dict(timestep_spacing="trailing", disable_corrector=[2]), 8, {}),
    ("flow_shift3", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0), 8, {}),
    ("flow_dynamic_mu", "FlowMatchEulerDiscreteScheduler", dict(use_dynamic_shifting=True), 8, {"__mu": 0.8}),
    ("flow_heun_shift2", "FlowMatchHeunDiscreteScheduler", dict(shift=2.0), 6, {}),
]

def tensor(t):
    t = t.detach().reshape(-1)
    return [float(v) for v in t.tolist()]

def main(src):
    tmp = tempfile.mkdtemp()
    for path, text in SHIM.items():
        os.makedirs(os.path.join(tmp, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(tmp, path), "w") as fh:
            fh.write(text)
    for f in FILES:
        shutil.copy(os.path.join(src, f + ".py"), os.path.join(tmp, "diffusers/schedulers", f + ".py"))
    sys.path.insert(0, tmp)
    import importlib, torch, numpy
    import diffusers.utils.torch_utils as tu
    torch.set_num_threads(2)
    mods = {f: importlib.import_module("diffusers.schedulers." + f) for f in FILES[1:]}
    classes = {name: getattr(m, name) for m in mods.values() for name in dir(m) if name.endswith("Scheduler")}
    out = {"meta": {"producer": f"diffusers 0.31.0 scheduler code, torch {torch.__version__}, numpy {numpy.__version__}, CPU float32",
                    "sample_shape": [1, 1, 2, 4]}, "cases": {}}
    for i, (name, cls, cfg, n, kw) in enumerate(CASES):
        sch = classes[cls](**cfg)
        mu = kw.pop("__mu", None)
        if mu is None:
            sch.set_timesteps(n)
        else:
            sch.set_timesteps(n, mu=mu)
        g = torch.Generator().manual_seed(1000 + i)
        shape = (1, 1, 2, 4)
        init_sigma = float(getattr(sch, "init_noise_sigma", 1.0))
        sample = torch.randn(shape, generator=g) * init_sigma
        case = {"class": cls, "config": {k: v for k, v in dict(sch.config).items()}, "num_inference_steps": n,
                "mu": mu, "step_kwargs": kw, "timesteps": tensor(sch.timesteps),
                "sigmas": tensor(sch.sigmas) if hasattr(sch, "sigmas") else None,
                "init_noise_sigma": init_sigma, "initial_sample": tensor(sample), "steps": []}
        for t in sch.timesteps:
            rec = {"t": float(t), "sample_in": tensor(sample)}
            scaled = sch.scale_model_input(sample, t) if hasattr(sch, "scale_model_input") else sample
            rec["scaled_model_input"] = tensor(scaled)
            model_output = torch.randn(shape, generator=g)
            rec["model_output"] = tensor(model_output)
            tu.DRAWN.clear()
            res = sch.step(model_output, t, sample, generator=g, **kw) if "generator" in inspect.signature(sch.step).parameters else sch.step(model_output, t, sample, **kw)
            if tu.DRAWN:
                rec["noise"] = tensor(tu.DRAWN[-1])
            rec["prev_sample"] = tensor(res.prev_sample)
            if getattr(res, "pred_original_sample", None) is not None:
                rec["pred_original_sample"] = tensor(res.pred_original_sample)
            case["steps"].append(rec)
            sample = res.prev_sample
        for k, v in list(case["config"].items()):
            if isinstance(v, float) and v in (float("inf"), float("-inf")):
                case["config"][k] = "inf" if v > 0 else "-inf"
        out["cases"][name] = case
    # forward-process helpers
    ddim = classes["DDIMScheduler"](rescale_betas_zero_snr=True)
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn((3, 1, 2, 2), generator=g)
    noise = torch.randn((3, 1, 2, 2), generator=g)
    ts = torch.tensor([0, 500, 999])
    out["add_noise_zsnr"] = {"timesteps": [0, 500, 999], "original_samples": tensor(x0), "noise": tensor(noise),
                             "noisy_samples": tensor(ddim.add_noise(x0, noise, ts)),
                             "velocity": tensor(ddim.get_velocity(x0, noise, ts))}
    # add_noise (scale_noise for FlowMatch) of the schedule-based classes, after set_timesteps(10)
    out["add_noise_schedules"] = {}
    for cls in ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"]:
        sch = classes[cls]()
        sch.set_timesteps(10)
        ts = sch.timesteps[[0, 3, 5]]
        if cls.startswith("FlowMatch"):
            noisy = torch.cat([sch.scale_noise(x0[i:i + 1], ts[i:i + 1], noise[i:i + 1]) for i in range(3)])
        else:
            noisy = sch.add_noise(x0, noise, ts)
        out["add_noise_schedules"][cls] = {"timesteps": tensor(ts), "noisy_samples": tensor(noisy)}
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "schedulers_extra.json"), "w") as fh:
        json.dump(out, fh, separators=(",", ":"), allow_nan=False)
    shutil.rmtree(tmp)

if __name__ == "__main__":
    main(sys.argv[1])
