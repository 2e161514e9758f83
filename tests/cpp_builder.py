"""A stand-in for inductor's CppBuilder in tests of models/aoti_interface.py and models/kernel_units.py:
what their builds read of it (target path, command line), over real g++ runs."""
import subprocess


class Builder:
    def __init__(self, directory, name, kind, flags=""):
        self.dir, self.flags = directory, flags
        self.source, self.target = directory / f"{name}.{kind}.cpp", directory / f"{name}.{kind}.o"

    def get_target_file_path(self):
        return str(self.target)

    def get_command_line(self):
        return f"g++ {self.source} -O1 -fPIC {self.flags} -c -o {self.target}"


def whole(builder):
    """Inductor's own build of `builder` (counted in whole.calls)."""
    subprocess.run(builder.get_command_line().split(), check=True)
    whole.calls += 1


whole.calls = 0
