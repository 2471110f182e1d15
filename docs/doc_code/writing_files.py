"""docs/guide/library.md, "Writing GPT-SoVITS files": read any GPT-SoVITS file, write an export."""

from _setup import FIXTURES, place, workdir

workdir()
place("SoVITS_weights_v2Pro/myvoice_e8_s200.pth", FIXTURES / "SoVITS_weights_v2Pro" / "gsvfix_e1_s2.pth")

# __doc_start__
from gsv_ray.io import read
from gsv_ray.io.writers import write_sovits_export

f = read("SoVITS_weights_v2Pro/myvoice_e8_s200.pth")  # GsvFile: kind, versions, state_dict, config, info, ...
write_sovits_export(
    "out/myvoice_e9_s300.pth", f.state_dict, config=f.config, info="9epoch_300iteration", version=f.version
)
# __doc_end__

again = read("out/myvoice_e9_s300.pth")
assert (again.kind, again.version, again.info) == ("sovits-export", "v2Pro", "9epoch_300iteration"), again
assert list(again.state_dict) == list(f.state_dict)
print("ok", again.kind, again.version)
