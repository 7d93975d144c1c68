"""The opening of a script run in a fresh interpreter (`python -I -c`) whose import system refuses
`reformer_hf` however it is installed (an editable install puts a finder on sys.meta_path that -I
alone does not remove): whatever the script loads must come from a saved folder's own code."""

REFUSE_REFORMER_HF = r'''
import importlib.abc, sys

class RefuseReformerHF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "reformer_hf" or name.startswith("reformer_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None

sys.meta_path.insert(0, RefuseReformerHF())
'''
